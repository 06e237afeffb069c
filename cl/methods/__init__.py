"""Continual-learning methods: one LightningModule per file, all subclasses of :class:`cl.methods.base.ContinualMethod`.

Methods are chosen by the ``_target_`` of ``conf/method/<name>.yaml``; there is no other registry.
"""
