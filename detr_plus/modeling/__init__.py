"""The public surface of the shared core: what a project imports (``contracts`` first)."""
from . import losses
from .backbone import ChannelMapper, resnet_stages
from .blocks import FFN, CrossAttentionBlock, FFNBlock, SelfAttentionBlock
from .contracts import (
    PRIMARY,
    ClassLoss,
    Criterion,
    DecoderLayer,
    DecoderOutput,
    DecoderQueries,
    DecoderVariant,
    DetectionPass,
    EncoderState,
    GroupSource,
    Head,
    Indices,
    LayerInputs,
    LayerOutput,
    LayerPredictions,
    LayerVariant,
    LayerWrapper,
    LossContext,
    PredictWith,
    QueryContext,
    QueryGroup,
    QuerySelection,
    QueryStream,
    Stream,
    Targets,
    TrainingBatch,
)
from .conditional import (ConditionalCrossAttentionBlock, ConditionalDecoderLayer, ConditionalSelfAttentionBlock,
                          ConditionalSpatialQuery)
from .criterion import SetCriterion
from .decoder import DeformableDecoder
from .decoder_layer import SHARED, DeformableDecoderLayer
from .encoder import DeformableEncoder
from .gather import QuerySubset, selected_first
from .groups import JointQueries, group_attention_mask, pad_per_image
from .heads import init_detection_heads
from .denoising import ContrastiveDenoising
from .hybrid import HybridQueries, RepeatedTargets
from .losses import FocalLoss, QualityFocalLoss, VarifocalPlusLoss
from .matcher import HungarianMatcher, OneToManyMatcher, matching_quality
from .meta_arch import DeformableDETR
from .standard_encoder import StandardEncoder, StandardEncoderLayer
from .transformer import DeformableTransformer
from .variants import (TRAINING_ONLY_CHILD, OwnBlocksVariant, OwnFFNVariant, TrainingVariant, VariantQuerySelection, is_training_only,
                       rename_legacy_keys, strip_training_parts)

__all__ = [
    "ChannelMapper", "ClassLoss", "ConditionalCrossAttentionBlock", "ConditionalDecoderLayer", "ConditionalSelfAttentionBlock",
    "ConditionalSpatialQuery", "StandardEncoder", "StandardEncoderLayer", "ContrastiveDenoising", "Criterion", "CrossAttentionBlock", "DecoderLayer", "DecoderOutput",
    "DecoderQueries", "DecoderVariant", "DeformableDETR", "DeformableDecoder", "DeformableDecoderLayer",
    "DeformableEncoder", "DeformableTransformer", "DetectionPass", "EncoderState", "FFN", "FFNBlock",
    "FocalLoss", "GroupSource", "Head", "HungarianMatcher", "HybridQueries", "Indices", "JointQueries", "LayerInputs",
    "LayerOutput", "LayerPredictions", "LayerVariant", "LayerWrapper", "LossContext", "OneToManyMatcher",
    "OwnBlocksVariant", "OwnFFNVariant", "PRIMARY", "PredictWith", "SHARED", "QualityFocalLoss", "QueryContext", "QueryGroup",
    "QuerySelection", "QueryStream", "QuerySubset", "RepeatedTargets", "selected_first", "SelfAttentionBlock", "SetCriterion", "Stream", "Targets",
    "TrainingBatch", "TrainingVariant", "VariantQuerySelection", "VarifocalPlusLoss", "group_attention_mask",
    "init_detection_heads", "is_training_only", "losses", "matching_quality", "pad_per_image", "rename_legacy_keys", "resnet_stages",
    "strip_training_parts", "TRAINING_ONLY_CHILD",
]
