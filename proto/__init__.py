"""Wire contracts of healingwork: every Kafka message and HTTP body as a msgspec Struct.

Nothing here imports a framework; services encode and decode with :mod:`proto.codec`.
"""
