"""The trap catalogue behind `parity conformance` (docs/design.md, "Traps"), split by concern; numpy + stdlib only.

catalogue  the Trap record, the catalogue data (CATALOGUE, TRAPS, for_framework) and each trap's effect
inputs     the probe inputs: every framework's probe is asked the same question
reference  numpy reference formulas: canonical values and the classifiers' yardsticks
judge      normalising, matching and divergence of measurements, the classifiers, effect helpers

Everything public is re-exported here: probes do `from common import traps as T` and use T.SEED, T.classify_*.
"""

from common.frameworks import FRAMEWORKS
from common.traps.catalogue import CATALOGUE, NORM_EPS, TRAPS, Trap, for_framework
from common.traps.inputs import (
    ADAM,
    DECAY,
    DROPOUT_RATES,
    EMBED_COEF,
    EMBED_TOKENS,
    EPS_HAT,
    INIT_FAN_IN,
    INIT_FAN_OUT,
    LAYER_NORM_INPUT,
    LOSS_LOGITS,
    LOSS_MASK,
    MASK_LABELS,
    MOMENTUM,
    ORDER_N,
    ORDER_N_SMALL,
    RNN_INPUT,
    RNN_INPUT_PRE,
    RNN_WIDTH,
    SEED,
    SEQUENCES,
    SHUFFLE_BUFFER,
    SHUFFLE_EPOCHS,
    WEIGHT_LABELS,
    dropout_input,
)
from common.traps.judge import (
    classify_decay,
    classify_dropout,
    classify_layer_norm,
    classify_loss_input,
    classify_padded_output,
    classify_reduction,
    classify_second_moment,
    close,
    diverges,
    effect_ratio,
    finite_or_name,
    listing,
    matches,
    normalise,
    rel_diff,
    spread,
    values_of,
)
from common.traps.reference import (
    DROPOUT_FORMS,
    adam_first_update_reference,
    adam_reference,
    keras_first_epsilon_hat,
    layer_norm_reference,
    sgd_decay_reference,
    sgd_momentum_reference,
)

__all__ = [
    "ADAM", "CATALOGUE", "DECAY", "DROPOUT_FORMS", "DROPOUT_RATES", "EMBED_COEF", "EMBED_TOKENS", "EPS_HAT",
    "FRAMEWORKS", "INIT_FAN_IN", "INIT_FAN_OUT", "LAYER_NORM_INPUT", "LOSS_LOGITS", "LOSS_MASK", "MASK_LABELS",
    "MOMENTUM", "NORM_EPS", "ORDER_N", "ORDER_N_SMALL", "RNN_INPUT", "RNN_INPUT_PRE", "RNN_WIDTH", "SEED",
    "SEQUENCES", "SHUFFLE_BUFFER", "SHUFFLE_EPOCHS", "TRAPS", "WEIGHT_LABELS", "Trap",
    "adam_first_update_reference", "adam_reference", "classify_decay", "classify_dropout", "classify_layer_norm",
    "classify_loss_input", "classify_padded_output", "classify_reduction", "classify_second_moment", "close",
    "diverges", "dropout_input", "effect_ratio", "finite_or_name", "for_framework", "keras_first_epsilon_hat",
    "layer_norm_reference", "listing", "matches", "normalise", "rel_diff", "sgd_decay_reference",
    "sgd_momentum_reference", "spread", "values_of",
]
