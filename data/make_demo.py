"""Render the bundled demo scene (data/demo/scene.png + scene.json) from code, so no third-party image is shipped.

A small street scene: sky, sun, hills, road, a house, a car and a tree, with COCO-style boxes for the
objects. Deterministic: running it again gives the same bytes.

    python data/make_demo.py
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

OUT = Path(__file__).parent / "demo"
WIDTH, HEIGHT = 320, 240
CATEGORIES = [{"id": 1, "name": "house"}, {"id": 2, "name": "car"}, {"id": 3, "name": "tree"}, {"id": 4, "name": "sun"}]


def render() -> tuple[Image.Image, list[dict]]:
    rng = np.random.default_rng(7)
    sky = np.linspace([120, 170, 235], [200, 225, 250], HEIGHT // 2).astype(np.uint8)
    canvas = np.zeros((HEIGHT, WIDTH, 3), np.uint8)
    canvas[: HEIGHT // 2] = sky[:, None, :]
    canvas[HEIGHT // 2 :] = (96, 150, 70)
    img = Image.fromarray(canvas)
    d = ImageDraw.Draw(img)
    boxes = []

    def add(category: int, xyxy: tuple[float, float, float, float]) -> None:
        x0, y0, x1, y1 = xyxy
        boxes.append({"category_id": category, "bbox": [x0, y0, x1 - x0, y1 - y0]})

    d.ellipse((250, 18, 290, 58), fill=(255, 220, 90))
    add(4, (250, 18, 291, 59))
    d.polygon([(0, 130), (60, 95), (130, 125), (210, 90), (320, 128), (320, 140), (0, 140)], fill=(80, 130, 60))
    d.polygon([(0, 240), (120, 150), (200, 150), (320, 240)], fill=(90, 90, 95))
    d.line([(160, 152), (160, 240)], fill=(240, 240, 240), width=3)
    # house
    d.rectangle((30, 110, 110, 170), fill=(200, 120, 90), outline=(90, 50, 40), width=2)
    d.polygon([(22, 112), (70, 78), (118, 112)], fill=(150, 40, 40))
    d.rectangle((60, 140, 80, 170), fill=(90, 60, 40))
    d.rectangle((38, 120, 54, 134), fill=(180, 220, 250), outline=(60, 60, 60))
    d.rectangle((88, 120, 104, 134), fill=(180, 220, 250), outline=(60, 60, 60))
    add(1, (22, 78, 119, 171))
    # car
    d.rounded_rectangle((170, 178, 262, 210), radius=8, fill=(30, 80, 200), outline=(10, 20, 60), width=2)
    d.polygon([(188, 178), (200, 160), (236, 160), (250, 178)], fill=(40, 100, 220), outline=(10, 20, 60))
    d.polygon([(204, 164), (216, 164), (216, 177), (195, 177)], fill=(200, 230, 255))
    d.polygon([(220, 164), (234, 164), (245, 177), (220, 177)], fill=(200, 230, 255))
    for cx in (190, 242):
        d.ellipse((cx - 11, 199, cx + 11, 221), fill=(20, 20, 20))
        d.ellipse((cx - 5, 205, cx + 5, 215), fill=(160, 160, 160))
    add(2, (170, 160, 263, 222))
    # tree
    d.rectangle((280, 130, 292, 185), fill=(100, 70, 40))
    for cx, cy, r in ((286, 112, 24), (270, 125, 16), (302, 124, 16), (286, 96, 16)):
        d.ellipse((cx - r, cy - r, cx + r, cy + r), fill=(40, 120, 50))
    add(3, (262, 72, 319, 186))
    # fine texture so blur and compression have something to remove
    noise = rng.normal(0, 6, (HEIGHT, WIDTH, 1))
    textured = np.clip(np.asarray(img, np.float64) + noise, 0, 255).astype(np.uint8)
    img = Image.fromarray(textured).filter(ImageFilter.SMOOTH)
    for i, b in enumerate(boxes, start=1):
        b.update(id=i, image_id=1, iscrowd=0, area=b["bbox"][2] * b["bbox"][3])
    return img, boxes


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    img, anns = render()
    img.save(OUT / "scene.png", optimize=True)
    coco = {"images": [{"id": 1, "file_name": "scene.png", "width": WIDTH, "height": HEIGHT}],
            "annotations": anns, "categories": CATEGORIES}
    (OUT / "scene.json").write_text(json.dumps(coco, indent=1) + "\n")
    print(f"wrote {OUT / 'scene.png'} and {OUT / 'scene.json'}")


if __name__ == "__main__":
    main()
