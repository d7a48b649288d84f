"""What each of the 7 expressions does to a synthetic face: the parameters drawing.py draws from.

Face units: half the face width is 1, y points down. NEUTRAL is the relaxed face; DELTAS move it toward each
expression, scaled by a per-example strength (uniform in [1 - STRENGTH_SPREAD, 1] at difficulty 1), so that
weak expressions overlap with neutral; JITTER adds class-independent noise to every parameter. Changing a
value changes the pixels a seed gives: bump drawing.GENERATOR_VERSION with it.
"""

NEUTRAL = dict(
    eye_h=0.075,       # eye half-height (wide eyes > 0.1, narrowed < 0.05)
    brow_y=-0.44,      # brow height (more negative = raised)
    brow_in_dy=0.0,    # inner brow end: + lowered (angry), - raised (sad, fear)
    brow_in_dx=0.0,    # inner brow end: + drawn together
    brow_arch=0.05,    # brow arch height
    mouth_y=0.55,
    mouth_w=0.50,      # mouth full width
    mouth_c=0.0,       # corner lift: + smile, - frown
    mouth_o=0.0,       # mouth opening half-height
    lip_raise=0.0,     # one-sided upper lip raise (disgust)
    mouth_t=0.045,     # closed-mouth line thickness
    wrinkle=0.0,       # nose wrinkles and flared nostrils (disgust)
    frown=0.0,         # vertical frown lines between the brows (angry)
    folds=0.0,         # cheek folds beside the mouth (happy)
)
DELTAS: dict[str, dict[str, float]] = {
    "angry": dict(brow_in_dy=0.15, brow_y=0.05, brow_in_dx=0.05, brow_arch=-0.03, eye_h=-0.02,
                  mouth_w=-0.14, mouth_t=0.02, mouth_c=-0.03, frown=1.0),
    "disgust": dict(lip_raise=0.13, wrinkle=1.0, eye_h=-0.035, brow_y=0.04, brow_in_dy=0.05,
                    mouth_c=-0.05, mouth_w=-0.04),
    "fear": dict(brow_y=-0.10, brow_in_dy=-0.09, brow_in_dx=0.06, brow_arch=-0.04, eye_h=0.05,
                 mouth_w=0.16, mouth_o=0.05, mouth_c=-0.04),
    "happy": dict(mouth_c=0.15, mouth_w=0.12, mouth_o=0.04, eye_h=-0.02, folds=1.0),
    "sad": dict(mouth_c=-0.11, mouth_w=-0.05, brow_in_dy=-0.10, brow_in_dx=0.03, brow_arch=-0.02,
                eye_h=-0.015, mouth_y=0.02),
    "surprise": dict(brow_y=-0.14, brow_arch=0.06, eye_h=0.05, mouth_o=0.16, mouth_w=-0.24,
                     mouth_y=0.05),
    "neutral": {},
}
# Class-independent jitter (standard deviations at difficulty 1) on every parameter.
JITTER = dict(
    eye_h=0.012, brow_y=0.035, brow_in_dy=0.03, brow_in_dx=0.02, brow_arch=0.02, mouth_y=0.04,
    mouth_w=0.05, mouth_c=0.035, mouth_o=0.02, lip_raise=0.02, mouth_t=0.01, wrinkle=0.0,
    frown=0.0, folds=0.0)
STRENGTH_SPREAD = 0.8  # expression strength is uniform in [1 - spread, 1] at difficulty 1
