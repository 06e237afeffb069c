"""Data: dataset loaders (:mod:`cl.data.sources`, :mod:`cl.data.digits`) and stream builders (:mod:`cl.data.stream`)."""
