"""PaddleMIX's README name for ``single_image_batch_infer.py`` (``python .../batch_infer.py``); same flags."""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from single_image_batch_infer import main  # noqa: E402

if __name__ == "__main__":
    main()
