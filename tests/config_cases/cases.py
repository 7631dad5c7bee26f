"""Differential test cases for util/config.py against hydra-core 1.3.2 / omegaconf 2.3.0.

Plain data only: no project imports, no hydra imports.  Consumed by
  * tests/fixtures/gen_hydra_fixtures.py  (runs real Hydra, writes tests/fixtures/hydra_expected.json)
  * tests/test_config_differential.py     (runs util.config and compares)

Every case is a dict:
  id           unique, descriptive
  kind         "compose" | "defaults" | "sweep"
  tree         folder under tests/config_cases/
  config_name  primary config name without ".yaml" (compose/defaults)
  overrides    list of command-line override strings
  env          optional {VAR: value or None}; None = make sure VAR is unset
  mode         optional "RUN" (default) or "MULTIRUN" (compose only)
  hydra_keys   optional dotted keys of the hydra node to compare as well (compose only)
  sweeper_params optional {key: value} for sweep cases; the sweep input is
               [f"{k}={v}" for k, v in sweeper_params.items()] + overrides (BasicSweeper)
  mentions     only for refusals: substrings the ConfigError message must contain
  note         optional free text for humans

A case with `mentions` is a refusal: Hydra must fail on it (the generator checks) and
util.config must raise ConfigError.  A case without `mentions` must succeed in Hydra.
"""

# Environment variables that configs in the trees read (or that could leak in from the
# developer's shell).  Both the generator and the test unset all of them before every
# case, then apply the case's own `env`.
CLEAR_ENV = [
    "PROJECT_ROOT",
    "CFGTEST_VAR",
    "CFGTEST_SET",
    "CFGTEST_REQUIRED",
    "SELF_WARNING_AS_ERROR",
]

CASES = []


def _add(kind, id, tree, config_name=None, overrides=(), **extra):
    case = {
        "id": id,
        "kind": kind,
        "tree": tree,
        "config_name": config_name,
        "overrides": list(overrides),
    }
    case.update(extra)
    CASES.append(case)


def C(id, tree, config_name, overrides=(), **extra):
    _add("compose", id, tree, config_name, overrides, **extra)


def D(id, tree, config_name, overrides=(), **extra):
    _add("defaults", id, tree, config_name, overrides, **extra)


def S(id, overrides=(), tree="sweep", **extra):
    _add("sweep", id, tree, None, overrides, **extra)


CHOICES = ["hydra.runtime.choices"]
DIRNAME = ["hydra.job.override_dirname"]

# ---------------------------------------------------------------------------------------
# seed: shaped like the seed project (data/model/modality/trainer/experiment/debug/paths/
# hparams_search, `# @package _global_` experiments, `override /modality: ${data}/arrhythmia`)
# ---------------------------------------------------------------------------------------
C("seed_train_default", "seed", "train", [], hydra_keys=CHOICES)
C("seed_experiment_ecg_arrhythmia", "seed", "train", ["experiment=ecg_arrhythmia"], hydra_keys=CHOICES,
  note="override entries incl. interpolated `override /modality: ${data}/arrhythmia`")
C("seed_experiment_cmr_acdc", "seed", "train", ["experiment=cmr_acdc"], hydra_keys=CHOICES)
C("seed_experiment_option_with_slash", "seed", "train", ["experiment=fine_tuning/ecg_arrhythmia"],
  hydra_keys=CHOICES, note="option name with a slash adds no package level; header after the header line + blank line")
C("seed_experiment_cli_beats_override_entry", "seed", "train",
  ["experiment=ecg_arrhythmia", "modality=ecg/ptbxl"], hydra_keys=CHOICES)
C("seed_experiment_cli_data_changes_interpolated_default", "seed", "train",
  ["experiment=cmr_acdc", "data=ecg"], hydra_keys=CHOICES)
C("seed_experiment_plus_values", "seed", "train",
  ["experiment=ecg_arrhythmia", "trainer.max_epochs=5", "data.batch_size=32", "model.learning_rate=1e-4"])
C("seed_experiment_without_header", "seed", "train", ["experiment=no_header"])
C("seed_debug_default", "seed", "train", ["debug=default"], note="the working form of the seed's `+debug=default`")
C("seed_debug_fdr_relative_default", "seed", "train", ["debug=fdr"])
C("seed_debug_then_cli_value", "seed", "train", ["debug=default", "trainer.max_epochs=2", "extras.enforce_tags=true"])
C("seed_hparams_search", "seed", "train", ["hparams_search=ecg_optuna"],
  hydra_keys=["hydra.sweeper.params", "hydra.mode"])
C("seed_hparams_search_multirun", "seed", "train", ["hparams_search=ecg_optuna", "experiment=ecg_arrhythmia"],
  mode="MULTIRUN", hydra_keys=["hydra.sweeper.params", "hydra.mode"])
C("seed_env_project_root", "seed", "train", [], env={"PROJECT_ROOT": "/data/proj"})
C("seed_paths_redirect", "seed", "train", ["paths.data_dir=/data/run_x/data", "paths.log_dir=/data/run_x/logs"])
C("seed_multirun_sweeps_ignored", "seed", "train",
  ["model.learning_rate=1e-5,3e-5", "experiment=ecg_arrhythmia,cmr_acdc", "trainer.max_epochs=3"],
  mode="MULTIRUN", hydra_keys=DIRNAME + CHOICES,
  note="MULTIRUN composition ignores sweep overrides (values and groups)")
C("seed_delete_null_group", "seed", "train", ["~debug"], hydra_keys=CHOICES)
C("seed_delete_data_group", "seed", "train", ["~data"], hydra_keys=CHOICES)
C("seed_eval_missing_ckpt_stays", "seed", "eval", [])
C("seed_eval_with_ckpt", "seed", "eval", ["ckpt_path=path/to/ckpt.pt", "experiment=cmr_acdc"])
C("seed_tags_list_override", "seed", "train", ["tags=[a,b]"])
C("seed_plus_new_nested_key", "seed", "train", ["+extras.print_config=true"])
C("seed_seed_null", "seed", "train", ["seed=null"])
C("seed_modality_slash_cli", "seed", "train", ["data=cmr", "modality=cmr/acdc"], hydra_keys=CHOICES)
# seed refusals
C("seed_refuse_plus_debug_multiple_values", "seed", "train", ["+debug=default"], mentions=["debug"],
  note="seed quirk: debug: null is already in the list -> 'Multiple values for debug'")
C("seed_refuse_debug_log_level_global", "seed", "train", ["debug=default", "debug.log_level=DEBUG"],
  mentions=["debug.log_level"], note="seed quirk: debug config is _global_, there is no `debug` key")
C("seed_refuse_interpolated_default_missing_option", "seed", "train", ["experiment=ecg_arrhythmia", "data=cmr"],
  mentions=["cmr/arrhythmia"], note="${data}/arrhythmia resolves against the CLI choice data=cmr")
C("seed_refuse_unknown_model_option", "seed", "train", ["model=nope"], mentions=["nope"])
C("seed_refuse_unknown_experiment", "seed", "train", ["experiment=does_not_exist"], mentions=["does_not_exist"])
C("seed_refuse_new_key_without_plus", "seed", "train", ["extras=1"], mentions=["extras"])

# ---------------------------------------------------------------------------------------
# values: YAML scalar loading and every override form / value type
# ---------------------------------------------------------------------------------------
C("values_yaml_scalar_types", "values", "yaml_types", [],
  note="OmegaConf float rule, no timestamps, YAML 1.1 bools/ints as SafeLoader reads them")
C("ov_int_underscore", "values", "over", ["alpha=1_000"])
C("ov_float_exponent", "values", "over", ["ratio=3e-6"])
C("ov_float_exponent_no_dot", "values", "over", ["ratio=1e3", "alpha=1e-5"])
C("ov_float_leading_dot", "values", "over", ["ratio=.5", "alpha=5."])
C("ov_float_inf", "values", "over", ["ratio=inf", "alpha=-inf"])
C("ov_float_nan", "values", "over", ["ratio=nan"])
C("ov_bool_any_case", "values", "over", ["flag=true", "alpha=TRUE", "name=False"])
C("ov_null", "values", "over", ["alpha=null", "name=NULL"])
C("ov_yes_off_are_strings", "values", "over", ["name=yes", "alpha=off"])
C("ov_quoted_strings", "values", "over", ["name='a,b'", 'alpha="3"', "flag='true'"])
C("ov_quoted_escaped_quote", "values", "over", [r"name='it\'s'", r'alpha="a\"b"'])
C("ov_list_nested", "values", "over", ["items=[1,a,[x]]"])
C("ov_list_empty", "values", "over", ["items=[]"])
C("ov_list_with_quotes_and_spaces", "values", "over", ["items=['a,b', c, \"d e\"]"])
C("ov_list_replaces_scalar", "values", "over", ["alpha=[1,2]"])
C("ov_dict_merges", "values", "over", ["opts={x:10,z:[q]}"])
C("ov_dict_nested_value", "values", "over", ["opts={y:{p:1}}", "nested={deep:{k:w}}"])
C("ov_dict_empty", "values", "over", ["opts={}"])
C("ov_dict_replaces_null", "values", "over", ["nothing={a:1}"])
C("ov_null_replaces_dict", "values", "over", ["opts=null"])
C("ov_escapes", "values", "over", [r"name=a\,b", r"alpha=x\=y", r"ratio=\{a\}", r"flag=\[b\]"])
C("ov_escapes_more", "values", "over", [r"name=a\ b", r"alpha=\(c\)", r"ratio=a\:b", r"flag=a\\b"])
C("ov_whitespace_trimmed", "values", "over", ["name=  a b  "])
C("ov_interpolation_kept_and_resolved", "values", "over", ["name=${alpha}"])
C("ov_interpolation_embedded", "values", "over", ["name=pre_${alpha}_post"])
C("ov_interpolation_quoted", "values", "over", ["name='${ratio}'"])
C("ov_interpolation_escaped_literal", "values", "over", [r"name=\${alpha}"])
C("ov_interpolation_in_containers", "values", "over", ["items=[${alpha},2]", "opts={x:${ratio}}"])
C("ov_empty_string", "values", "over", ["name="])
C("ov_plus_creates_parents", "values", "over", ["+new.deep.key=v"])
C("ov_plus_into_existing_dict", "values", "over", ["+opts.w=3"])
C("ov_force_add_existing", "values", "over", ["++alpha=5"])
C("ov_force_add_new", "values", "over", ["++brand.new=1"])
C("ov_delete_key", "values", "over", ["~alpha"])
C("ov_delete_nested", "values", "over", ["~opts.x"])
C("ov_delete_matching_value", "values", "over", ["~opts.x=1", "~name=text"])
C("ov_delete_list", "values", "over", ["~items"])
C("ov_delete_then_readd_moves_key_last", "values", "over", ["~alpha", "+alpha=9"])
C("ov_applied_in_order", "values", "over", ["alpha=1", "alpha=2", "+extra=1", "extra=2"])
C("ov_nested_set", "values", "over", ["nested.deep.k=w", "opts.z=[c]"])
C("ov_type_change", "values", "over", ["alpha=abc", "flag=5"])
C("ov_missing_value_set", "values", "over", ["missing=5"])
C("ov_hex_is_string", "values", "over", ["alpha=0x1F"])
C("ov_signed_numbers", "values", "over", ["alpha=-5", "ratio=-1.5e-3", "flag=+7"])
C("ov_plus_on_null_key_allowed", "values", "over", ["+nothing=5"],
  note="Hydra: `+k=v` only refuses when the current value is not None")
C("ov_plus_list_on_existing_key", "values", "over", ["+items=[9]"],
  note="Hydra: `+k=<list or dict>` on an existing key is allowed (merged)")
C("ov_plus_dict_on_existing_key", "values", "over", ["+opts={w:1}"])
C("ov_force_add_dict_with_new_key", "values", "over", ["++opts={x:5,zzz:2}"])
C("ov_env_interpolation_value", "values", "over", ["name=${oc.env:CFGTEST_VAR,dflt}"], env={"CFGTEST_VAR": None})
# values refusals
C("ov_refuse_dict_override_new_key", "values", "over", ["opts={x:1,zzz:2}"], mentions=["opts"])
C("ov_refuse_plus_existing_key", "values", "over", ["+alpha=2"], mentions=["alpha"])
C("ov_refuse_delete_missing_key", "values", "over", ["~nosuchkey"], mentions=["nosuchkey"])
C("ov_refuse_delete_value_mismatch", "values", "over", ["~alpha=2"], mentions=["alpha"])
C("ov_refuse_delete_null_key", "values", "over", ["~nothing"], mentions=["nothing"],
  note="Hydra treats a key whose value is null as not existing for `~`")
C("ov_refuse_missing_plus_new_key", "values", "over", ["newkey=1"], mentions=["newkey"])
C("ov_refuse_missing_plus_nested_new_key", "values", "over", ["opts.newkey=1"], mentions=["opts.newkey"])
C("ov_refuse_ambiguous_comma", "values", "over", ["alpha=1,2"], mentions=["alpha=1,2"])
C("ov_refuse_range_in_single_run", "values", "over", ["alpha=range(1,3)"], mentions=["alpha=range(1,3)"])
C("ov_refuse_choice_in_single_run", "values", "over", ["alpha=choice(1,2)"], mentions=["alpha=choice(1,2)"])
C("ov_refuse_glob_in_single_run", "values", "over", ["alpha=glob(*)"], mentions=["alpha=glob(*)"])
C("ov_refuse_parse_error", "values", "over", ["alpha=[1,2"], mentions=["[1,2"])
C("ov_refuse_non_ascii_unquoted", "values", "over", ["name=h\u00e9llo"], mentions=["name"],
  note="Hydra's override lexer rejects non-ASCII characters in unquoted values")
C("ov_refuse_dangling_interpolation", "values", "over", ["name=${nope_key}"], mentions=["nope_key"])
C("ov_refuse_env_missing", "values", "over", ["name=${oc.env:CFGTEST_VAR}"], env={"CFGTEST_VAR": None},
  mentions=["CFGTEST_VAR"])

# ---------------------------------------------------------------------------------------
# merge: dict merge, list replace, null vs dict, ??? never overwrites, key order, _self_
# ---------------------------------------------------------------------------------------
C("merge_rules_and_key_order", "merge", "merge", [])
C("merge_self_first", "merge", "self_first", [])
C("merge_self_middle", "merge", "self_middle", [])
C("merge_self_absent_appended_last", "merge", "self_absent", [])
C("merge_dict_over_scalar", "merge", "dict_over_scalar", [])
C("merge_scalar_replaces_dict", "merge", "scalar_over_dict", [], note="OmegaConf: merging a scalar onto a dict replaces it")
C("merge_refuse_list_over_dict", "merge", "list_over_dict", [], mentions=["list_over_dict"])

# ---------------------------------------------------------------------------------------
# pkg: package headers, @pkg, nested groups, relative/absolute group paths
# ---------------------------------------------------------------------------------------
C("pkg_no_header", "pkg", "main", [])
C("pkg_header_global", "pkg", "main", ["grp=global"])
C("pkg_header_global_dot_a", "pkg", "main", ["grp=global_a"])
C("pkg_header_a_b", "pkg", "main", ["grp=ab"])
C("pkg_header_after_blank_lines", "pkg", "main", ["grp=blank_lines"])
C("pkg_header_not_read_after_comment", "pkg", "main", ["grp=after_comment"],
  note="an ordinary comment line before `# @package` ends the header")
C("pkg_header_not_read_after_key", "pkg", "main", ["grp=after_key"])
C("pkg_header_without_space", "pkg", "main", ["grp=tight"])
C("pkg_header_indented_extra_spaces", "pkg", "main", ["grp=indented"])
C("pkg_at_in_list_beats_header", "pkg", "main_at", [], hydra_keys=CHOICES)
C("pkg_cli_choice_for_at_entry", "pkg", "main_at", ["grp@from_list=global"], hydra_keys=CHOICES)
C("pkg_plus_group_with_package", "pkg", "main", ["+grp@extra=ab"], hydra_keys=CHOICES)
C("pkg_nested_relative_absolute", "pkg", "main_nested", [], hydra_keys=CHOICES)
C("pkg_nested_cli_relative_group_path", "pkg", "main_nested", ["outer/inner=y", "outer/inner@outer.renamed=x"],
  hydra_keys=CHOICES)
C("pkg_primary_header", "pkg", "primary_header", [])
C("pkg_refuse_unknown_group_with_package", "pkg", "main", ["nogroup@pkg=x"], mentions=["nogroup"])

# ---------------------------------------------------------------------------------------
# defs: every defaults-list entry form, overrides, deletion, append
# ---------------------------------------------------------------------------------------
C("defs_all_forms", "defs", "forms", [], hydra_keys=CHOICES)
C("defs_experiment_override_entry", "defs", "forms", ["exp=ovr_db"], hydra_keys=CHOICES)
C("defs_experiment_self_first", "defs", "forms", ["exp=with_self"])
C("defs_cli_beats_override_entry", "defs", "forms", ["exp=ovr_db", "db=sqlite"], hydra_keys=CHOICES)
C("defs_multiselect_cli_reorder", "defs", "forms", ["feat=[c,a]"], hydra_keys=CHOICES)
C("defs_multiselect_cli_empty", "defs", "forms", ["feat=[]"], hydra_keys=CHOICES)
C("defs_list_choice_on_single_group", "defs", "forms", ["db=[mysql,sqlite]"], hydra_keys=CHOICES)
C("defs_delete_group", "defs", "forms", ["~db"], hydra_keys=CHOICES)
C("defs_delete_group_matching_option", "defs", "forms", ["~db=mysql"])
C("defs_delete_optional_group", "defs", "forms", ["~cache"])
C("defs_cli_choice_for_at_entry", "defs", "forms", ["db@backup=sqlite"], hydra_keys=CHOICES)
C("defs_plus_group_append_after_self", "defs", "append_after_self", ["+cache=redis"], hydra_keys=CHOICES)
C("defs_plus_group_with_override_inside", "defs", "forms", ["+exp2=ovr_db2"], hydra_keys=CHOICES)
C("defs_null_group", "defs", "null_group", [], hydra_keys=CHOICES)
C("defs_null_group_cli_choice", "defs", "null_group", ["db=postgres"], hydra_keys=CHOICES)
C("defs_must_choose_cli", "defs", "must_choose", ["db=mysql"])
C("defs_must_choose_multirun_skips", "defs", "must_choose", [], mode="MULTIRUN", hydra_keys=CHOICES)
C("defs_must_choose_multirun_sweep_skips", "defs", "must_choose", ["db=mysql,postgres"], mode="MULTIRUN",
  hydra_keys=CHOICES + DIRNAME)
C("defs_optional_present_and_missing", "defs", "optional_forms", [], hydra_keys=CHOICES)
C("defs_two_overriders_later_wins", "defs", "two_overriders", [], hydra_keys=CHOICES)
C("defs_primary_override_vs_nested", "defs", "primary_override", [], hydra_keys=CHOICES)
C("defs_interpolated_choice", "defs", "interp_choice", [], hydra_keys=CHOICES)
C("defs_interpolated_choice_follows_cli", "defs", "interp_choice", ["db=postgres"], hydra_keys=CHOICES)
C("defs_nested_group_absolute_and_multiselect", "defs", "server_main", [], hydra_keys=CHOICES)
C("defs_nested_group_cli", "defs", "server_main", ["server/mods=[ssl]"], hydra_keys=CHOICES)
C("defs_no_defaults_plus_group", "defs", "no_defaults", ["+db=mysql"])
C("defs_empty_defaults", "defs", "empty_defaults", [])
C("defs_plus_unknown_group_is_a_value", "defs", "forms", ["+nogroup=x"],
  note="no such group: `+nogroup=x` adds the config value nogroup: x")
# defs refusals
C("defs_refuse_delete_group_mismatch", "defs", "forms", ["~db=postgres"], mentions=["db=postgres"])
C("defs_refuse_force_add_group", "defs", "forms", ["++cache=redis"], mentions=["cache"])
C("defs_refuse_plus_group_already_listed", "defs", "forms", ["+db=postgres"], mentions=["db"])
C("defs_refuse_plus_group_listed_as_null", "defs", "null_group", ["+db=postgres"], mentions=["db"])
C("defs_refuse_missing_choice", "defs", "must_choose", [], mentions=["db"])
C("defs_refuse_experiment_before_target", "defs", "exp_first", [], mentions=["exp/ovr_db", "db"])
C("defs_refuse_interpolation_of_config_value", "defs", "interp_value", [], mentions=["app"])
C("defs_refuse_only_override_unlisted_group", "defs", "only_overrides_primary", [], mentions=["db"])
C("defs_refuse_cli_group_not_in_list", "defs", "forms", ["exp2=ovr_db2"], mentions=["exp2"])
C("defs_refuse_unknown_option", "defs", "forms", ["db=oracle"], mentions=["oracle"])
C("defs_refuse_unknown_group", "defs", "forms", ["nogroup=x"], mentions=["nogroup"])
C("defs_refuse_unknown_config_name", "defs", "no_such_primary", [], mentions=["no_such_primary"])
C("defs_refuse_multirun_sweep_of_hydra_key", "defs", "forms", ["hydra.job.num=1,2"], mode="MULTIRUN",
  mentions=["hydra.job.num=1,2"])
C("defs_refuse_multiselect_unknown_item", "defs", "forms", ["feat=[a,zz]"], mentions=["zz"])

# ---------------------------------------------------------------------------------------
# bad: broken config files
# ---------------------------------------------------------------------------------------
C("bad_refuse_duplicate_key_primary", "bad", "dup_key", [], mentions=["dup_key"])
C("bad_refuse_duplicate_key_in_group", "bad", "dup_key_group", [], mentions=["port"])
C("bad_refuse_override_before_entry", "bad", "override_before", [], mentions=["db"])
C("bad_refuse_override_unlisted_group", "bad", "override_unlisted", [], mentions=["feat"])
C("bad_refuse_duplicate_self", "bad", "self_twice", [], mentions=["self_twice"])
C("bad_refuse_dangling_interpolation", "bad", "dangling", [], mentions=["nope.x", "a.b"])
C("bad_refuse_dangling_relative_interpolation", "bad", "dangling_rel", [], mentions=["missing_sibling"])
C("bad_refuse_interpolation_cycle", "bad", "cycle", [], mentions=["a"])
C("bad_refuse_interpolation_to_missing", "bad", "to_missing", [], mentions=["b"])
C("bad_refuse_missing_config_file", "bad", "missing_file", [], mentions=["no_such_config"])
C("bad_refuse_unknown_option_in_file", "bad", "unknown_option", [], mentions=["oracle"])
C("bad_refuse_interpolation_in_options_list", "bad", "options_interp", [], mentions=["options_interp"])
C("bad_refuse_primary_is_list", "bad", "listy", [], mentions=["listy"])
C("bad_scalar_replaces_group_dict", "bad", "scalar_on_dict", [], note="not an error: the scalar replaces the dict")
C("bad_null_group_cli_choice_ok", "bad", "base", ["feat=a"])
C("bad_refuse_null_group_plus", "bad", "base", ["+feat=a"], mentions=["feat"])

# ---------------------------------------------------------------------------------------
# interp: OmegaConf interpolation and resolvers
# ---------------------------------------------------------------------------------------
C("interp_all_forms", "interp", "interp", [])
C("interp_cli_retypes_target", "interp", "interp", ["num.f=2", "a.b=text", "lst=[7,8,9]"])
C("interp_env_unset_defaults", "interp", "env", [], env={"CFGTEST_VAR": None, "CFGTEST_SET": "42"})
C("interp_env_set", "interp", "env", [], env={"CFGTEST_VAR": "from_env", "CFGTEST_SET": "x"})
C("interp_env_required_set", "interp", "env_required", [], env={"CFGTEST_REQUIRED": "/home/x"})
C("interp_refuse_env_required_unset", "interp", "env_required", [], env={"CFGTEST_REQUIRED": None},
  mentions=["CFGTEST_REQUIRED"])
C("interp_hydra_resolvers", "interp", "hydra_resolvers", ["hydra.job.num=3", "a=2", "+c=1"],
  hydra_keys=DIRNAME)
C("interp_hydra_job_num_unset_is_null", "interp", "hydra_resolvers", [],
  note="hydra.job.num is ??? in a single-run compose; ${hydra:job.num} then yields None")
C("interp_override_dirname", "interp", "hydra_dirname",
  ["b=y", "a=5", "lst=[1,2]", "+new=x", "hydra.job.name=ignored_in_dirname"], hydra_keys=DIRNAME)
C("interp_override_dirname_sorting_and_escapes", "interp", "hydra_dirname",
  ["~b", "a=${lst}", "+z_key='q r'", "+A_key=1"], hydra_keys=DIRNAME)
C("interp_override_dirname_empty", "interp", "hydra_dirname", [], hydra_keys=DIRNAME)
C("interp_late_layers_and_cli", "interp", "late", [])
C("interp_late_cli", "interp", "late", ["y=from_cli", "w.v=6"])
C("interp_hydra_node_in_primary", "interp", "hydra_node", [],
  hydra_keys=["hydra.run.dir", "hydra.sweep.dir", "hydra.job.name"])
C("interp_hydra_node_multirun_subdir", "interp", "hydra_node", ["hydra.job.num=2", "paths.log=/x"], mode="MULTIRUN",
  hydra_keys=["hydra.sweep.dir", "hydra.sweep.subdir", "hydra.job.num"])
C("interp_hydra_override_of_run_dir", "interp", "hydra_node", ["hydra.run.dir=/abs/${paths.log}/r"],
  hydra_keys=["hydra.run.dir"])

# ---------------------------------------------------------------------------------------
# defaults lists (kind "defaults"): final merge order, packages, _self_
# ---------------------------------------------------------------------------------------
D("dl_seed_train", "seed", "train", [])
D("dl_seed_experiment_and_debug", "seed", "train", ["experiment=ecg_arrhythmia", "debug=default"])
D("dl_seed_experiment_slash_option", "seed", "train", ["experiment=fine_tuning/ecg_arrhythmia", "~debug"])
D("dl_seed_eval_multi_overrides", "seed", "eval", ["experiment=cmr_acdc", "data=ecg", "modality=ecg/ptbxl"])
D("dl_defs_forms_optional_missing_multiselect", "defs", "forms", [])
D("dl_defs_forms_experiment_and_append", "defs", "forms", ["exp=ovr_db", "+exp2=ovr_db2", "feat=[]"])
D("dl_defs_optional_forms", "defs", "optional_forms", [])
D("dl_defs_nested_group_defaults", "defs", "server_main", [])
D("dl_defs_append_after_self", "defs", "append_after_self", ["+cache=redis"])
D("dl_defs_no_defaults", "defs", "no_defaults", [])
D("dl_defs_deleted_groups", "defs", "forms", ["~db", "~cache", "db@backup=sqlite"])
D("dl_merge_self_first", "merge", "self_first", [])
D("dl_merge_self_middle", "merge", "self_middle", [])
D("dl_merge_self_absent", "merge", "self_absent", [])
D("dl_pkg_nested", "pkg", "main_nested", [])
D("dl_pkg_headers_and_at", "pkg", "main_at", ["+grp@extra=global_a"])
D("dl_refuse_must_choose", "defs", "must_choose", [], mentions=["db"])

# ---------------------------------------------------------------------------------------
# sweeps (kind "sweep"): BasicSweeper.split_arguments, flattened
# ---------------------------------------------------------------------------------------
S("sw_simple_comma", ["a=1,2"])
S("sw_two_keys_first_slowest", ["a=1,2", "b=x,y,z"])
S("sw_range", ["a=range(1,4)"])
S("sw_range_step", ["a=range(0,10,3)"])
S("sw_range_single_arg", ["a=range(3)"])
S("sw_range_float", ["a=range(0,1,0.25)"])
S("sw_choice", ["db=choice(mysql,postgres)"])
S("sw_glob_all", ["db=glob(*)"], note="sorted option names; nested groups and non-yaml files are not options")
S("sw_glob_exclude", ["db=glob(*, exclude=x*)"])
S("sw_glob_include_list_exclude_list", ["db=glob([m*,p*,s*,x*],exclude=[s*])"])
S("sw_sweeper_params_cli_keeps_position", ["b=z", "c=5"], sweeper_params={"a": "1,2", "b": "x,y"})
S("sw_sweeper_params_only", [], sweeper_params={"model.lr": "0.1,0.01", "data.bs": "range(32,65,32)"})
S("sw_quoted_comma", ["s='a,b',c"])
S("sw_choice_quoted_comma", ["s=choice('a,b',c)"])
S("sw_list_value_not_a_sweep", ["l=[1,2]", "a=1,2"])
S("sw_list_values_swept", ["l=[1,2],[3]"])
S("sw_non_sweep_keys_repeated", ["x=1", "a=1,2", "y=two", "b=p,q"])
S("sw_no_overrides", [])
S("sw_plus_and_delete", ["+c=1,2", "~d"])
S("sw_spaces_after_comma", ["a=1, 2"])
S("sw_group_values", ["db=mysql,postgres", "a=1"])
S("sw_same_key_twice_last_wins", ["a=1,2", "a=3"])
S("sw_float_and_bool_formatting", ["lr=1e-3,3e-6", "f=True", "g=1.50"])
S("sw_interpolation_and_space_escaped", ["x=${a},b", "s=a b"])
S("sw_glob_nested_group", ["server/mods=glob(*)"], tree="defs")
S("sw_refuse_interval", ["lr=interval(0,1)"], mentions=["interval"])
