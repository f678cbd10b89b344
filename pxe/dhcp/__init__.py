"""DHCPv4 for network boot: codec (`packet`), pure decisions (`decide`), servers (`server`)."""
