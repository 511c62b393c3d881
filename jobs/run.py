"""Entry point for `ray job submit`: runs the recipe the config names (``recipe:``; ALMA by default) on the
cluster the job lands on.

    ray job submit --working-dir . -- python -m jobs.run --config jobs/configs/laptop.yaml [key=value ...]
"""

import sys

from alma_ray.cli import main

if __name__ == "__main__":
    sys.exit(main(["run", *sys.argv[1:]]))
