"""DeepLab semantic segmentation in JAX/Flax."""
