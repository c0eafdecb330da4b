"""Video transformer models written in the style of Hugging Face transformers model files."""

from transformers import AutoConfig, AutoModel, AutoModelForVideoClassification

from videotome.models import motionformer
from videotome.models.motionformer import (
    MotionformerAttention,
    MotionformerConfig,
    MotionformerForVideoClassification,
    MotionformerLayer,
    MotionformerModel,
    MotionformerPreTrainedModel,
    MotionformerVideoClassifierOutput,
    infer_config_from_official,
    load_official_state_dict,
    official_to_hf_key,
)

# Registering lets the Auto classes load saved Motionformer directories by their "motionformer" model_type.
AutoConfig.register(MotionformerConfig.model_type, MotionformerConfig, exist_ok=True)
AutoModel.register(MotionformerConfig, MotionformerModel, exist_ok=True)
AutoModelForVideoClassification.register(MotionformerConfig, MotionformerForVideoClassification, exist_ok=True)

__all__ = motionformer.__all__
