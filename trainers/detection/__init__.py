"""Detection fine-tuning: Penn-Fudan data, the tutorial's two models, its recipe, COCO evaluation, the photo step."""
