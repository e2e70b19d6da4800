"""An ImageFolder that survives unreadable or corrupt image files, or stops at the first, as configured.

On a shared cluster a dataset copy can hold a truncated JPEG or a file without read permission;
finding out after a day of training, from a stack trace in a loader worker, is what this avoids.
"""
import logging
from collections import Counter

from PIL import UnidentifiedImageError
from torchvision import datasets
from torchvision.datasets.folder import IMG_EXTENSIONS, default_loader

from a2d2c.errors import ConfigError

log = logging.getLogger(__name__)

BAD_IMAGE_POLICIES = ("fail", "skip")


class TolerantImageFolder(datasets.ImageFolder):
    """`bad_images="fail"`: the first unreadable file ends the run with one line naming it.
    `bad_images="skip"`: it is replaced by the next readable sample and counted in a warning.

    The replacement is deterministic (the next index), so a resumed run reads the same samples.
    The count is per process (each loader worker keeps its own). `loader` reads one file; an
    OSError from it counts as an unreadable file. A class folder without any image file is a
    ConfigError naming it.
    """

    def __init__(self, root, transform=None, bad_images: str = "fail", loader=default_loader):
        if bad_images not in BAD_IMAGE_POLICIES:
            raise ConfigError(f"dataset.bad_images={bad_images!r} is not valid; use {' or '.join(BAD_IMAGE_POLICIES)}")
        # allow_empty: torchvision's own error names the classes, not the folders, in a long line.
        try:
            super().__init__(root, transform=transform, loader=loader, allow_empty=True)
        except FileNotFoundError as e:  # no such folder, or one without class sub-folders
            raise ConfigError(f"cannot read an image folder at {root} ({e}); expected one sub-folder per class, "
                              f"holding its images") from e
        counts = Counter(label for _, label in self.samples)
        empty = [f"{self.root}/{name}" for name, label in self.class_to_idx.items() if counts[label] == 0]
        if empty:
            raise ConfigError(f"class folder{'s' if len(empty) > 1 else ''} {', '.join(empty)} "
                              f"hold{'' if len(empty) > 1 else 's'} no image file ({', '.join(IMG_EXTENSIONS)}); "
                              f"every folder under {self.root} is a class: add its images or remove it")
        self.bad_images = bad_images
        self.num_skipped = 0

    def __getitem__(self, index: int):
        for attempt in range(len(self.samples)):
            current = (index + attempt) % len(self.samples)
            try:
                return super().__getitem__(current)
            except (OSError, UnidentifiedImageError, SyntaxError) as e:  # PIL raises SyntaxError for some broken headers
                path = self.samples[current][0]
                if self.bad_images == "fail":
                    raise ConfigError(f"cannot read image {path} ({type(e).__name__}: {e}); fix or remove it, or set "
                                      f"dataset.bad_images=skip to skip unreadable files") from e
                self.num_skipped += 1
                log.warning("skipped unreadable image %s (%s); %d skipped so far in this process",
                            path, type(e).__name__, self.num_skipped)
        raise ConfigError(f"no readable image in {self.root}: every file failed to load")
