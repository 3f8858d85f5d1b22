"""Sheet identity: the marking detector (YOLO), the imprint embedding (Keras) and matching."""
