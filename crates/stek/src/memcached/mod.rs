//! A read-only memcached text-protocol server for ticket keys.
