from .backbone import ChannelMapper, resnet_stages
from .branches import OwnFFNBranch
from .criterion import SetCriterion
from .decoder import DecoderOutput, DeformableDecoder, LayerBranch, LayerPredictions, group_self_attn_mask
from .encoder import DeformableEncoder
from .matcher import HungarianMatcher, OneToManyMatcher
from .meta_arch import DeformableDETR
from .routes import TrainingRoute, strip_training_routes
from .transformer import DeformableTransformer
