"""Running a trained network and scoring it: `inference` (Detector, image sources), `metrics` (Darknet's mAP,
COCO) and `mapdata` (the map dataset and the detection pass shared by `darkpy map` and training's --map)."""
