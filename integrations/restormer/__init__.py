"""Restormer integration (swz30/Restormer vendors a BasicSR fork as its own ``basicsr`` package):
``model_type: SPTImageCleanModel`` for Restormer's own ``basicsr/train.py``; default targets for the
Restormer architecture. See docs/integrations.md.
"""
