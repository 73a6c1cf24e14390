"""Post-processing of network outputs: the dense CRF of DeepLab v1/v2."""

from deeplab_jax.postprocess.crf import dense_crf  # noqa: F401
