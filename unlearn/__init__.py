"""Machine unlearning of a forget set from any checkpoint written by ``cl.run``.

``python -m unlearn.run checkpoint=RUN_DIR_OR_TASK_CKPT unlearn_method=ssd forget=class forget.classes=[3]`` rebuilds
the model and the stream from the checkpoint's own config (:mod:`unlearn.context`), builds the forget / retain / test
splits (:mod:`unlearn.forget`, :mod:`unlearn.data`), runs one method of :mod:`unlearn.methods` and evaluates it
(:mod:`unlearn.evaluate`, :mod:`unlearn.mia`, :mod:`unlearn.report`). Heavy imports happen inside functions.
"""
