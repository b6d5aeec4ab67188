"""The accel/accelN node: each open() is a DrmFile, each ioctl goes to the DRM dispatcher."""

from __future__ import annotations

import logging

from emudev.drm.device import DrmDevice
from emudev.drm.file import ClientIdentity, DrmFile
from emudev.drm.ioctl import DrmDispatcher
from emudev.drm.usermem import UserMemory
from emudev.fuse import IoctlResult, Request
from emudev.nodes.tree import DeviceFile, OpenFile

log = logging.getLogger("emudev.accel")


class AccelFile(OpenFile):
    def __init__(self, file: DrmFile, dispatcher: DrmDispatcher) -> None:
        self.file = file
        self.dispatcher = dispatcher

    def ioctl(self, req: Request, cmd: int, arg: int, in_data: memoryview, out_size: int) -> IoctlResult:
        outcome = self.dispatcher.dispatch(self.file, cmd, in_data, UserMemory(req.pid))
        return IoctlResult(result=outcome.result, data=outcome.data)

    def release(self) -> None:
        self.file.device.release_file(self.file)
        log.debug("%s: file %d of pid %d closed", self.file.device.name, self.file.id, self.file.client.tgid)


def accel_node(device: DrmDevice, dispatcher: DrmDispatcher) -> DeviceFile:
    def open_accel(req: Request, flags: int) -> AccelFile:
        file = device.open_file(ClientIdentity.of(req.pid, req.uid))
        log.debug("%s: file %d opened by pid %d", device.name, file.id, file.client.tgid)
        return AccelFile(file, dispatcher)

    return DeviceFile(name=device.name, opener=open_accel)
