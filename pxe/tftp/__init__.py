"""Read-only TFTP server (RFC 1350 + 2347/2348/2349/7440) for iPXE binaries."""

from pxe.tftp.server import TftpServer, TftpStats

__all__ = ["TftpServer", "TftpStats"]
