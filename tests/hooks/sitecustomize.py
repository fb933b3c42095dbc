"""Test instrumentation for the training processes a test starts; never part of the product.

A test that wants it puts this folder first on the PYTHONPATH of the processes it starts, so each
of them (the launcher, msrun's ranks) imports this file at start-up. With MNV3_TEST_DUMP_DIR,
MNV3_TEST_CRASH_AT, ... set (see train_hooks.py), core.train.loop.train is wrapped the moment core.train.loop is
imported; nothing is imported before that, so start-up (e.g. launcher.openmp before MindSpore)
is unchanged.
"""
import importlib.abc
import importlib.machinery
import os
import sys

TARGET = "core.train.loop"


class _WrapTrainOnImport(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name != TARGET:
            return None
        sys.meta_path.remove(self)
        spec = importlib.machinery.PathFinder.find_spec(name, path, target)
        if spec is None:
            return None
        execute = spec.loader.exec_module

        def exec_module(module):
            execute(module)
            import train_hooks  # this folder is on sys.path
            module.train = train_hooks.instrumented(module.train)

        spec.loader.exec_module = exec_module
        return spec


if any(os.environ.get(name) for name in ("MNV3_TEST_DUMP_DIR", "MNV3_TEST_CRASH_AT",
                                         "MNV3_TEST_HANG_AT", "MNV3_TEST_SIGTERM_AT")):
    sys.meta_path.insert(0, _WrapTrainOnImport())
