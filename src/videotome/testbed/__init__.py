"""The built-in testbed: generated digit-motion clips, four small trained video transformers, `videotome demo`."""
