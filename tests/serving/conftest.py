"""One real ``sherlock serve`` subprocess (KServe's REST server) on 127.0.0.1, shared by the serving tests."""

import pytest
from served import start_server


@pytest.fixture(scope="package")
def server(tiny_model_dir, tmp_path_factory):
    served = start_server(tiny_model_dir, tmp_path_factory.mktemp("serve") / "server.log",
                          "--max-batch-size", "8", "--batch-wait-ms", "20")
    yield served
    served.stop()
