"""Drawing of the synthetic demo people (used by `generate.py`).

Each HVC attribute maps to a visible cue, so a model trained on the demo set learns something real
and its metrics move off the majority baseline. Tables below are indexed by HVC class order
(schema.py); `_check_tables` fails at import if the schema changes shape.

    python -c "from tfds_person_attrs.demo.generate import preview; preview('/tmp/demo_preview.png')"
"""

from __future__ import annotations

import colorsys

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from tfds_person_attrs.schema import HVC

SIZE = 224

# Per-class visual parameters, in HVC class order (the comment names the order assumed).
HAIR_GREY = (40, 70, 110, 160, 215)                # age: 15-25, 25-35, 35-45, 45-55, 55+
# weight: normal, over, slightly-over, under. Steps of x1.6 between the common classes: the random figure height
# and the band's stretch to the model's width each change a width by up to x1.3, so smaller steps are not learnt
# in the demo's budget (x1.22 was not).
TORSO_WIDTH = (0.9, 1.8, 1.45, 0.55)
BAG_KIND = ("office", "grocery", None)             # bag: Daily/Office/Work, Grocery/Home/Plastic, None
SHOE_KIND = (None, "fancy", "normal")              # footwear: CantSee, Fancy, Normal
MOUTH = ("angry", "happy", "neutral", "sad")       # emotion: Angry/Serious, Happy, Neutral, Sad
VIEW = ("back", "front", "side")                   # pose: Back, Front-Frontish, Side
LONG_HAIR = (True, False)                          # gender: female, male


def _check_tables():
    for attr, table in (("age", HAIR_GREY), ("weight", TORSO_WIDTH), ("bag", BAG_KIND), ("footwear", SHOE_KIND),
                        ("emotion", MOUTH), ("pose", VIEW), ("gender", LONG_HAIR)):
        assert len(table) == HVC[attr].num_classes, f"demo draw table for {attr!r} does not match the schema"


_check_tables()


def _hsv(h: float, s: float, v: float) -> tuple[int, int, int]:
    r, g, b = colorsys.hsv_to_rgb(h % 1.0, s, v)
    return int(r * 255), int(g * 255), int(b * 255)


def _clothing_colour(rng: np.random.Generator, long_hair: bool) -> tuple[int, int, int]:
    # Gender's second cue: warm saturated tops (red/pink/magenta/orange) vs cool or muted ones. One top
    # in ten comes from the other family, so hair length matters too and colour alone is not the answer.
    if rng.random() < 0.1:
        long_hair = not long_hair
    if long_hair:
        return _hsv(rng.uniform(-0.12, 0.08), rng.uniform(0.5, 0.9), rng.uniform(0.6, 0.95))
    if rng.random() < 0.3:
        g = rng.uniform(0.25, 0.75)
        return _hsv(0, 0, g)
    return _hsv(rng.uniform(0.3, 0.68), rng.uniform(0.35, 0.8), rng.uniform(0.35, 0.8))


def _background(draw: ImageDraw.ImageDraw, rng: np.random.Generator, x0: int, x1: int) -> None:
    # Street-like clutter (walls, shop fronts, ground) so the model cannot use a flat background shortcut.
    light = rng.uniform(0.35, 1.0)  # night scenes are darker, as in the real data
    top = np.array(_hsv(rng.random(), rng.uniform(0, 0.4), rng.uniform(0.3, 0.9))) * light
    ground = np.array(_hsv(rng.random(), rng.uniform(0, 0.25), rng.uniform(0.35, 0.8))) * light
    horizon = int(rng.uniform(0.55, 0.75) * SIZE)
    for y in range(0, SIZE, 4):  # coarse vertical gradient: 56 bands are cheap and look smooth after blur
        t = y / SIZE
        c = top * (1 - t) + ground * t if y < horizon else ground * (0.9 + 0.1 * t)
        draw.rectangle([x0, y, x1 - 1, y + 3], fill=tuple(int(v) for v in c))
    for _ in range(int(rng.integers(3, 8))):
        w, h = rng.integers(10, 50), rng.integers(15, 90)
        bx, by = int(rng.integers(x0 - w // 2, x1 - 4)), int(rng.integers(0, horizon))
        col = tuple(int(v * light) for v in _hsv(rng.random(), rng.uniform(0, 0.7), rng.uniform(0.2, 0.9)))
        draw.rectangle([max(x0, bx), by, min(x1 - 1, bx + w), by + h], fill=col)


def _rect(draw, cx, y0, w, y1, fill):
    draw.rectangle([int(cx - w / 2), int(y0), int(cx + w / 2), int(y1)], fill=fill)


def _face(draw, cx, hy, hw, hh, view, mouth, facing, skin):
    # Emotion marks are sized to survive the worst image quality (2x downscale, blur 1.6) and the demo model's
    # 4x stem: a white open grin, blue tears and a thick down-turned mouth, thick angry brows on a face flushed
    # red (see _draw_person); neutral is a thin short line. Thin 2-pixel mouths were not learnt. A profile shows
    # the half on its facing side; the back of the head shows none: there emotion is not visible, as in real data.
    eye = (20, 20, 20)
    ey = hy + hh * 0.42
    if view == "front":
        eye_xs, mx, mw = [cx - 0.22 * hw, cx + 0.22 * hw], cx, hw * 0.32
    elif view == "side":
        eye_xs, mx, mw = [cx + facing * 0.25 * hw], cx + facing * 0.22 * hw, hw * 0.2
    else:
        return
    for ex in eye_xs:
        draw.ellipse([ex - 2, ey - 2, ex + 2, ey + 2], fill=eye)
    my = hy + hh * 0.70
    if mouth == "angry":  # thick brows slanting down to the nose, a tight straight mouth
        for ex in eye_xs:
            s = 1 if ex >= cx else -1
            draw.line([ex + s * 0.16 * hw, ey - 7, ex - s * 0.16 * hw, ey - 3], fill=eye, width=3)
        draw.line([mx - mw, my, mx + mw, my], fill=(40, 5, 10), width=3)
    elif mouth == "happy":  # a wide open grin: a white half-disc with a dark rim
        draw.chord([mx - mw * 1.25, my - hh * 0.14, mx + mw * 1.25, my + hh * 0.18], 0, 180, fill=(252, 252, 252),
                   outline=(90, 10, 20), width=1)
    elif mouth == "sad":  # a thick down-turned mouth and blue tears running from the eyes
        draw.arc([mx - mw, my, mx + mw, my + hh * 0.22], 190, 350, fill=(40, 5, 10), width=3)
        for ex in eye_xs:
            draw.rectangle([ex - 1.5, ey + 3, ex + 1.5, ey + hh * 0.3], fill=(40, 130, 255))
    else:
        draw.line([mx - mw * 0.5, my, mx + mw * 0.5, my], fill=(110, 30, 40), width=1)
    if view == "side":  # a nose bump on the facing side
        nx = cx + facing * hw * 0.5
        draw.polygon([(nx, ey), (nx + facing * 5, ey + 7), (nx, ey + 9)], fill=skin)


def _bag(draw, rng, kind, cx, tw, H, y_top, side):
    if kind == "office":  # dark rigid rectangle at the hip, with a strap across the body
        col = tuple(int(v) for v in _hsv(rng.uniform(0.02, 0.1), rng.uniform(0.3, 0.7), rng.uniform(0.08, 0.28)))
        bx = cx + side * (tw / 2 + 0.04 * H)
        by = y_top + 0.40 * H
        draw.line([cx - side * tw * 0.4, y_top + 0.16 * H, bx, by], fill=col, width=3)
        _rect(draw, bx, by, 0.16 * H, by + 0.14 * H, col)
    elif kind == "grocery":  # light plastic bag hanging low from the hand, with two handle loops
        col = _hsv(rng.uniform(0.1, 0.18), rng.uniform(0.0, 0.25), rng.uniform(0.88, 1.0))
        bx = cx + side * (tw / 2 + 0.07 * H)
        by = y_top + 0.50 * H
        w, h = 0.15 * H, 0.17 * H
        draw.polygon([(bx - w / 2, by), (bx + w / 2, by), (bx + w * 0.6, by + h), (bx - w * 0.6, by + h)], fill=col)
        for dx in (-w * 0.3, w * 0.1):
            draw.arc([bx + dx - 4, by - 10, bx + dx + 6, by + 4], 180, 360, fill=col, width=2)


def _shoes(draw, rng, kind, leg_xs, foot_y, leg_w, facing):
    if kind is None:
        return
    for lx in leg_xs:
        if kind == "fancy":  # bright pointed heels
            col = _hsv(rng.choice([0.0, 0.9, 0.13]), 0.9, 0.9)
            tip = lx + facing * leg_w * 1.1 if facing else lx
            draw.polygon([(lx - leg_w / 2, foot_y), (lx + leg_w / 2, foot_y), (tip, foot_y + 8)], fill=col)
            draw.rectangle([lx - leg_w / 2, foot_y, lx - leg_w / 2 + 2, foot_y + 9], fill=col)
        else:  # flat, wide sneakers: dark or white
            col = (25, 25, 25) if rng.random() < 0.5 else (235, 235, 235)
            draw.rectangle([lx - leg_w * 0.7 + facing * 2, foot_y, lx + leg_w * 0.7 + facing * 3, foot_y + 6],
                           fill=col)


def _draw_person(draw, rng, labels, cx):
    view = VIEW[labels["pose"]]
    long_hair = LONG_HAIR[labels["gender"]]
    shoe = SHOE_KIND[labels["footwear"]]
    # CantSee footwear: a taller (closer) figure whose feet fall below the frame bottom.
    H = rng.uniform(235, 265) if shoe is None else rng.uniform(180, 198)
    y_top = rng.uniform(8, 16) if shoe is None else rng.uniform(12, SIZE - 6 - H - 6)
    facing = int(rng.choice([-1, 1])) if view == "side" else 0
    skin = _hsv(rng.uniform(0.04, 0.09), rng.uniform(0.3, 0.6), rng.uniform(0.45, 0.95))
    g = HAIR_GREY[labels["age"]] + rng.uniform(-12, 12)
    hair = (int(g), int(g * 0.92), int(g * 0.85))  # slightly warm so young hair reads as dark brown
    top = _clothing_colour(rng, long_hair)
    trousers = _hsv(rng.uniform(0.55, 0.7), rng.uniform(0.1, 0.5), rng.uniform(0.12, 0.45))
    # Weight: the torso, and less so the legs and arms, are wider the heavier the person; in profile the
    # torso is narrower but keeps the same proportions between classes.
    bulk = TORSO_WIDTH[labels["weight"]]
    tw = 0.19 * H * bulk * (0.65 if view == "side" else 1.0)
    hw, hh = 0.10 * H, 0.135 * H  # a slightly large head, so the face marks have room
    hy = y_top
    torso_y0, torso_y1, leg_y1 = y_top + 0.15 * H, y_top + 0.52 * H, y_top + 0.95 * H

    if long_hair:  # long hair falls behind the shoulders; drawn first so the face sits on top
        _rect(draw, cx - facing * hw * 0.3, hy + hh * 0.2, hw * 1.35, y_top + 0.25 * H, hair)
    leg_w = 0.075 * H * bulk ** 0.75
    if view == "side":  # walking profile: legs in a wide stride, an inverted V seen from the side
        stride = rng.uniform(0.11, 0.16) * H
        leg_xs = [cx - stride, cx + stride]
        for lx in leg_xs:
            draw.polygon([(cx - leg_w / 2, torso_y1 - 4), (cx + leg_w / 2, torso_y1 - 4),
                          (lx + leg_w / 2, leg_y1), (lx - leg_w / 2, leg_y1)], fill=trousers)
    else:  # standing front or back: two parallel legs
        leg_xs = [cx - tw * 0.22, cx + tw * 0.22]
        for lx in leg_xs:
            _rect(draw, lx, torso_y1 - 4, leg_w, leg_y1, trousers)
    # Seen from the back the hair covers the nape; from the front the neck and a V-neck of skin show.
    _rect(draw, cx, hy + hh - 2, hw * 0.45, torso_y0 + 2, hair if view == "back" else skin)
    draw.rounded_rectangle([cx - tw / 2, torso_y0, cx + tw / 2, torso_y1], radius=int(0.04 * H), fill=top)
    if bulk > 1:  # a belly: wider than the chest and hanging over the belt (forward, in profile)
        bx = cx + facing * tw * 0.2
        bw = tw * (1 + 0.35 * (bulk - 1))
        draw.ellipse([bx - bw / 2, torso_y0 + 0.45 * (torso_y1 - torso_y0), bx + bw / 2,
                      torso_y1 + 0.12 * H * (bulk - 1)], fill=top)
    if view == "front":
        draw.polygon([(cx - hw * 0.45, torso_y0), (cx + hw * 0.45, torso_y0), (cx, torso_y0 + 0.07 * H)], fill=skin)
    arm_w = 0.05 * H * (0.6 + 0.4 * bulk)
    arm_xs = [cx + facing * 2] if view == "side" else [cx - tw / 2 - arm_w / 2, cx + tw / 2 + arm_w / 2]
    sleeve = tuple(int(c * 0.78) for c in top)  # a shade darker so arms read as arms, not a wider torso
    for ax in arm_xs:
        _rect(draw, ax, torso_y0 + 2, arm_w, y_top + 0.47 * H, sleeve)
        draw.ellipse([ax - arm_w / 2, y_top + 0.46 * H, ax + arm_w / 2, y_top + 0.46 * H + arm_w], fill=skin)
    head = [cx - hw / 2, hy, cx + hw / 2, hy + hh]
    if view == "back":  # the back of the head: all hair, no face
        draw.ellipse(head, fill=hair)
    else:
        face = skin
        if MOUTH[labels["emotion"]] == "angry":  # flushed a strong red
            face = tuple(int(0.2 * c + 0.8 * r) for c, r in zip(skin, (220, 35, 35)))
        draw.ellipse(head, fill=face)
        cap = [head[0] - 1, head[1] - 2, head[2] + 1, head[1] + hh * (0.55 if long_hair else 0.45)]
        draw.chord(cap, 180, 360, fill=hair)
        if view == "side":  # hair covers the back half of a profile head
            draw.chord([head[0], head[1], head[2], head[3]], 90 if facing > 0 else 270, 270 if facing > 0 else 450,
                       fill=hair)
        _face(draw, cx, hy, hw, hh, view, MOUTH[labels["emotion"]], facing, face)
    _shoes(draw, rng, shoe, leg_xs, leg_y1, leg_w, facing)
    side = facing if facing else int(rng.choice([-1, 1]))
    _bag(draw, rng, BAG_KIND[labels["bag"]], cx, tw, H, y_top, side)


def draw_scene(rng: np.random.Generator, labels: dict[str, int], x0: int, x1: int) -> Image.Image:
    """A 224x224 RGB picture: black bars, a street background in [x0, x1), and one person."""
    img = Image.new("RGB", (SIZE, SIZE), (0, 0, 0))
    draw = ImageDraw.Draw(img)
    _background(draw, rng, x0, x1)
    _draw_person(draw, rng, labels, (x0 + x1) / 2 + rng.uniform(-6, 6))
    return img


def degrade(img: Image.Image, rng: np.random.Generator, blur: float, noise: float, downscale: int,
            band: tuple[int, int]) -> Image.Image:
    """Image-quality cue: down/up-scaling, blur and sensor noise, applied to the band only.

    Working on the band crop keeps the bars exactly black (no blur or noise leaks into them) and
    halves the cost: blur and noise are the hot spots of the whole generator.
    """
    crop = img.crop((band[0], 0, band[1], SIZE))
    w = band[1] - band[0]
    if downscale > 1:
        crop = crop.resize((w // downscale, SIZE // downscale), Image.BILINEAR).resize((w, SIZE), Image.BILINEAR)
    if blur > 0:
        crop = crop.filter(ImageFilter.GaussianBlur(blur))
    a = np.asarray(crop).astype(np.float32)
    a += rng.standard_normal(a.shape, dtype=np.float32) * noise
    out = Image.new("RGB", (SIZE, SIZE), (0, 0, 0))
    out.paste(Image.fromarray(np.clip(a, 0, 255).astype(np.uint8), "RGB"), (band[0], 0))
    return out
