"""convserve service: the Flask app that serves bundles from the model store."""
