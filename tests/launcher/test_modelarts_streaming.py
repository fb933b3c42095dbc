"""Issue 25 item 5: a ModelArts job that streams its dataset (data.stream=true).

`submit` (the same definition `--print-job-spec` prints) declares no input channel for it, so
the platform does not copy the dataset into the container before the job starts; the job gets
the dataset's OBS URL as the `data_url` parameter, the node's agency as its credentials
(`storage_metadata_url`: Huawei Cloud's instance metadata, "Obtaining Metadata" / securitykey;
see tests/cloud/storage/test_metadata_credentials.py for the stand-in) and the region's OBS
endpoint (`OBS_REGION`). The job side is the boot file's own preparation (launcher.distributed.
prepare_launch, what launcher/modelarts.py runs before it starts the ranks) against SeaweedFS as
OBS, with the stand-in metadata service handing out the keys.
"""
from __future__ import annotations

import json

import numpy as np
import pytest

from cloud.storage.metadata_credentials import HUAWEI_METADATA_URL
from cloud.storage.store import open_storage
from cloud.storage.sync import upload_tree
from core.data.packing import pack_imagefolder
from core.data.pipeline import CorruptImages
from launcher.modelarts import boot as modelarts
from tests.cloud.storage.test_metadata_credentials import MetadataService
from tests.launcher.test_modelarts import platform  # noqa: F401 (fixture)

IMAGE = ["--image", "swr.example/org/mnv3:1", "--device_target", "CPU", "--flavor", "f",
         "--train_url", "obs://bucket/out"]


def spec_of(capsys, *argv) -> tuple[dict, str]:
    assert modelarts.main(["--print-job-spec", *IMAGE, *argv]) == 0
    captured = capsys.readouterr()
    return json.loads(captured.out), captured.err


def test_a_streaming_job_reads_its_dataset_itself(platform, capsys, monkeypatch, tmp_path):
    """Before: the dataset was always an input channel, which ModelArts downloads first."""
    monkeypatch.setenv("HUAWEICLOUD_REGION", "cn-north-4")
    staged, _ = spec_of(capsys, "--data_url", "obs://bucket/imagenet-packed")
    assert [i["name"] for i in staged["algorithm"]["inputs"]] == ["data_url"]

    spec, err = spec_of(capsys, "--data_url", "obs://bucket/imagenet-packed",
                        "--data_stream=true", "--data_cache_limit_gb=40")
    algorithm = spec["algorithm"]
    assert "inputs" not in algorithm  # nothing for the platform to download
    parameters = {p["name"]: p["value"] for p in algorithm["parameters"]}
    assert parameters["data_url"] == "obs://bucket/imagenet-packed/"
    assert parameters["storage_metadata_url"] == HUAWEI_METADATA_URL
    assert (parameters["data_stream"], parameters["data_cache_limit_gb"]) == ("True", "40")
    assert algorithm["environments"] == {"OBS_REGION": "cn-north-4"}
    assert err == ""
    # what the boot file makes of the parameters ModelArts appends
    argv = [f"--{name}={value}" for name, value in parameters.items()]
    rest, hyper = modelarts.split_hyperparameters(argv)
    boot = modelarts.parser().parse_args(rest)
    assert boot.data_url == "obs://bucket/imagenet-packed/"
    assert hyper["data.stream"] is True and hyper["storage.metadata_url"] == HUAWEI_METADATA_URL

    # credentials the user named are kept; without a region the definition says what to fill in
    monkeypatch.delenv("HUAWEICLOUD_REGION")
    spec, err = spec_of(capsys, "--data_url", "obs://bucket/d", "--data_stream=true",
                        "--storage_metadata_url=http://169.254.169.254/other")
    parameters = {p["name"]: p["value"] for p in spec["algorithm"]["parameters"]}
    assert parameters["storage_metadata_url"] == "http://169.254.169.254/other"
    assert spec["algorithm"]["environments"] == {"OBS_REGION": "YOUR-REGION"}
    assert "note: fill in --env OBS_REGION=REGION" in err
    recipe = tmp_path / "recipe.yaml"  # ... and so are those the recipe names
    recipe.write_text("storage:\n  metadata_url: http://169.254.169.254/from-recipe\n")
    spec, _ = spec_of(capsys, "--config", str(recipe), "--data_url", "obs://bucket/d",
                      "--data_stream=true", "--env", "OBS_ENDPOINT=https://obs.example")
    names = [p["name"] for p in spec["algorithm"]["parameters"]]
    assert "storage_metadata_url" not in names and "data_url" in names
    assert spec["algorithm"]["environments"] == {"OBS_ENDPOINT": "https://obs.example"}


def test_the_job_streams_from_obs_with_the_nodes_agency(platform, s3_server, tiny_dataset,
                                                       tmp_path, monkeypatch):
    from launcher.distributed import prepare_launch
    from launcher.modelarts.args import build_config, parse_boot_args, split_hyperparameters
    from core.data.sources import open_dataset
    packed = tmp_path / "packed"
    pack_imagefolder(tiny_dataset, packed, shard_size_mb=0.03, workers=1)
    bucket = s3_server.make_bucket()
    upload_tree(str(packed), open_storage(f"s3://{bucket}/imagenet-packed", s3_server.settings()), "")
    service = MetadataService(s3_server.access_key, s3_server.secret_key, lifetime_s=300)
    try:
        for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "OBS_ACCESS_KEY_ID",
                     "OBS_SECRET_ACCESS_KEY", "S3_ENDPOINT", "AWS_ENDPOINT_URL"):
            monkeypatch.delenv(name, raising=False)
        monkeypatch.setenv("OBS_ENDPOINT", s3_server.endpoint)  # SeaweedFS as the region's OBS
        # the parameters a streaming job gets (the agency's service: the stand-in)
        argv = [f"--data_url=obs://{bucket}/imagenet-packed/", "--data_stream=True",
                f"--storage_metadata_url={service.url}", "--storage_addressing_style=path",
                f"--train_url={tmp_path / 'outputs' / 'train_url_0'}", "--device_target=CPU"]
        argv, hyper = split_hyperparameters(argv)
        args, _ = parse_boot_args(argv)
        cfg, settings, _ = build_config(args, hyper, args.data_url, args.train_url)
        launch = prepare_launch(cfg, None, cache_dir=tmp_path / "cache", job_id="job-stream",
                                settings=settings)
        assert launch.ranks_cfg.data.path == f"obs://{bucket}/imagenet-packed/"  # ranks stream too
        assert not (tmp_path / "cache" / "data").exists()  # nothing staged
        split = open_dataset(launch.ranks_cfg.data.path).split("train")
        rows = split.rows(np.arange(len(split)), 0, CorruptImages(), 1)
        read = [image.tobytes() for image, _ in rows.create_tuple_iterator(num_epochs=1, output_numpy=True)]
        assert len(read) == 60 and all(data[:2] == b"\xff\xd8" for data in read)
        assert service.requests >= 1  # the keys came from the node's agency
    finally:
        service.close()
