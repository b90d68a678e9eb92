"""Networks and their training: the encoder and decoders, the one training loop, readouts trained side by side."""
