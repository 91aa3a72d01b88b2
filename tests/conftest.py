import warnings

# ArviZ 0.2x announces its refactor at import; it is noise in test output.
warnings.filterwarnings("ignore", category=FutureWarning, module="arviz")
