"""ModelArts: the boot file's parts (boot: what a node starts; args: its command line; plan: the
processes of a node; spec: the job definition; jobs: submit/status/logs/stop from your machine).
The boot command stays `python launcher/modelarts.py`, a script beside this package."""
