"""Models stage: LightGBM scorer, River online learner, registry, training and evaluation.

Modules are imported directly (``from models.lgbm import LightGBMScorer``) so that importing one
piece does not drag in the others (River and LightGBM are slow to import). This package never
imports ``engine``, ``agents`` or Faust; it satisfies ``engine.protocols`` structurally.
"""
