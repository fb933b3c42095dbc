import launcher.openmp  # noqa: F401  (OMP_WAIT_POLICY before MindSpore loads libgomp)

pytest_plugins = ["tests.s3_server", "tests.core_fixtures"]
