from .backbone import ChannelMapper, resnet_stages
from .branches import OwnFFNBranch
from .criterion import LossContext, SetCriterion
from .decoder import DecoderOutput, DeformableDecoder, LayerBranch, LayerOutput, LayerPredictions
from .encoder import DeformableEncoder
from .gather import QuerySubset
from .groups import QueryGroup, group_attention_mask, group_self_attn_mask, pad_per_image
from .matcher import HungarianMatcher, OneToManyMatcher
from .meta_arch import DeformableDETR, DetectionPass, TrainingBatch
from .routes import RouteQuerySelection, TrainingRoute, strip_training_routes
from .structures import DecoderQueries, EncoderState
from .transformer import DeformableTransformer, QuerySelection
