"""R1's release loader API (`ion.core.pack.release`, §12.6)."""

from ion.core.pack.app_manager import ReleaseDefinition, load_rel_file

__all__ = ["ReleaseDefinition", "ReleaseLoader"]


class ReleaseLoader:
    """Class methods only, as in R1."""

    @classmethod
    def load_rel_definition(cls, filename):
        """The ReleaseDefinition in `filename` (its apps checked); ConfigurationError naming what is wrong."""
        return load_rel_file(filename)
