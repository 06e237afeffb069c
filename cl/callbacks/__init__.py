"""Run-long Lightning callbacks plugged through ``cfg.callbacks`` (see :class:`cl.engine.loop.StreamRunner`).

Each is built once per run and given to every experience's Trainer; besides Lightning hooks it may define
``on_experience_end(runner, experience)``, ``report_metrics()`` and ``state_dict()/load_state_dict()`` (checkpointed).
Objects that spend training compute outside Lightning's ``fit`` (e.g. post-hoc FPF) expose ``extra_train_flops()``,
which :class:`cl.callbacks.flops.FlopCounter` adds to the run's ``flops``.
"""
