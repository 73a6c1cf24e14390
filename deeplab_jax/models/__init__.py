"""DeepLab models: backbones, context modules, decoders and their assembly."""
