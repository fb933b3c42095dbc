pytest_plugins = ["tests.s3_server", "tests.core_fixtures"]
