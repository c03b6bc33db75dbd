"""User-facing errors and the exit codes the CLI maps them to.

Every error a user can cause by what they feed lorafit (a recipe, data, an adapter, a path) is a
`LorafitError` subclass carrying a one-line message that names the file, key or value. The CLI prints
`error: <message>` and exits with `exit_code`; it never shows a traceback for these.
"""

EXIT_OK = 0
EXIT_OTHER = 1
EXIT_BAD_INPUT = 2
EXIT_DIVERGED = 3
EXIT_INTERRUPTED = 130


class LorafitError(Exception):
    """Base class: a message meant for the user and the exit code the CLI returns."""

    exit_code = EXIT_OTHER


class RecipeError(LorafitError):
    """A recipe is malformed: YAML syntax, unknown key, wrong type, or out-of-range value."""

    exit_code = EXIT_BAD_INPUT


class DataError(LorafitError):
    """Task data is missing, empty, or malformed."""

    exit_code = EXIT_BAD_INPUT


class ModelError(LorafitError):
    """A base model cannot be found or loaded."""

    exit_code = EXIT_BAD_INPUT


class AdapterError(LorafitError):
    """An adapter directory is missing files, corrupted, or belongs to another base model."""

    exit_code = EXIT_BAD_INPUT


class TargetError(LorafitError):
    """LoRA target patterns match no module (or match something that cannot be adapted)."""

    exit_code = EXIT_BAD_INPUT


class RunDirError(LorafitError):
    """An output directory already holds a run, or a run directory cannot be resumed."""

    exit_code = EXIT_BAD_INPUT


class DivergedError(LorafitError):
    """Training produced a non-finite loss; the last good checkpoint is kept."""

    exit_code = EXIT_DIVERGED


class MergeError(LorafitError):
    """A merge would add an update twice or produce non-finite weights."""

    exit_code = EXIT_BAD_INPUT


class WriteError(LorafitError, OSError):
    """A file or directory could not be written (disk full, permissions); what was there is unchanged.

    Also an OSError, so callers that already handle OSError (and add their own hint) still do.
    """

    exit_code = EXIT_OTHER
