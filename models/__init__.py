"""Models: signal ViT and ResNet encoders, the MAE, contrastive heads and losses, classifiers, pretrained-weight loading."""
