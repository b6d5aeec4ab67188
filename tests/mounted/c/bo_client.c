/* A C client of the emudev uapi: create a BO, fill it through a dma-buf mapping
 * (emudev_prime_handle_to_fd from the generated header), read it back through
 * mmap() of the device fd at the BO's fake offset. Exit 0 when both agree. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <unistd.h>

#include "emudev_accel.h"

static int fail(const char *what)
{
	fprintf(stderr, "%s: %s\n", what, strerror(errno));
	return 1;
}

int main(int argc, char **argv)
{
	struct drm_emudev_bo_create create = { .size = 3 * 4096 + 5, .flags = DRM_EMUDEV_BO_MAPPABLE };
	struct drm_emudev_bo_info info = { 0 };
	struct drm_emudev_bo_prep prep = { 0 };
	struct drm_emudev_bo_fini fini = { 0 };
	unsigned char *via_dmabuf, *via_device;
	size_t i;
	int fd, dmabuf;

	if (argc != 2)
		return 2;
	fd = open(argv[1], O_RDWR | O_CLOEXEC);
	if (fd < 0)
		return fail("open");
	if (ioctl(fd, DRM_IOCTL_EMUDEV_BO_CREATE, &create))
		return fail("BO_CREATE");
	if (create.size != 4 * 4096)
		return fail("size not page-rounded");
	info.handle = create.handle;
	if (ioctl(fd, DRM_IOCTL_EMUDEV_BO_INFO, &info))
		return fail("BO_INFO");
	if (emudev_prime_handle_to_fd(fd, create.handle, DRM_CLOEXEC | DRM_RDWR, &dmabuf))
		return fail("emudev_prime_handle_to_fd");
	if (lseek(dmabuf, 0, SEEK_END) != (off_t)create.size)
		return fail("dma-buf size");
	via_dmabuf = mmap(NULL, create.size, PROT_READ | PROT_WRITE, MAP_SHARED, dmabuf, 0);
	if (via_dmabuf == MAP_FAILED)
		return fail("mmap dma-buf");
	for (i = 0; i < create.size; i++)
		via_dmabuf[i] = (unsigned char)(i * 7 + 3);
	prep.handle = create.handle;
	prep.flags = DRM_EMUDEV_PREP_READ;
	if (ioctl(fd, DRM_IOCTL_EMUDEV_BO_PREP, &prep))
		return fail("BO_PREP");
	via_device = mmap(NULL, create.size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, (off_t)info.mmap_offset);
	if (via_device == MAP_FAILED)
		return fail("mmap device fd");
	if (memcmp(via_dmabuf, via_device, create.size) != 0) {
		fprintf(stderr, "device-fd mapping differs from the dma-buf mapping\n");
		return 1;
	}
	via_device[1] = 0xEE;
	fini.handle = create.handle;
	if (ioctl(fd, DRM_IOCTL_EMUDEV_BO_FINI, &fini))
		return fail("BO_FINI");
	if (via_dmabuf[1] != 0xEE) {
		fprintf(stderr, "write through the device fd did not reach the BO after FINI\n");
		return 1;
	}
	printf("ok\n");
	return 0;
}
