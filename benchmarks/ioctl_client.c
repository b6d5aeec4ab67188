/*
 * The timing loop of benchmarks/ioctl_latency.py, in C: the difference between the two clients
 * on the same server is what the Python interpreter adds to each round trip.
 *
 * Usage: ioctl_client getcap NODE CALLS WARMUP   (DRM_IOCTL_GET_CAP on a file opened O_RDWR)
 *        ioctl_client fionread - CALLS WARMUP    (FIONREAD on a pipe: a native kernel ioctl)
 * Prints "p50_ns p99_ns" (nearest-rank percentiles, the same rule as the Python side).
 */
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <time.h>
#include <unistd.h>

#define DRM_IOCTL_GET_CAP 0xC010640Cu
#define DRM_CAP_TIMESTAMP_MONOTONIC 0x6

static uint64_t now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static int cmp_u64(const void *a, const void *b)
{
	uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;

	return (x > y) - (x < y);
}

static uint64_t percentile(const uint64_t *sorted, size_t n, size_t p)
{
	return sorted[(n * p + 99) / 100 - 1];
}

/* Open what MODE names; set the ioctl request and argument to time. */
static int open_target(const char *mode, const char *node, unsigned long *request, void **arg)
{
	static uint64_t cap[2] = {DRM_CAP_TIMESTAMP_MONOTONIC, 0};
	static int avail;
	int fds[2];

	if (strcmp(mode, "getcap") == 0) {
		*request = DRM_IOCTL_GET_CAP;
		*arg = cap;
		return open(node, O_RDWR);
	}
	if (strcmp(mode, "fionread") == 0 && pipe(fds) == 0) {
		*request = FIONREAD;
		*arg = &avail;
		return fds[0];
	}
	errno = EINVAL;
	return -1;
}

int main(int argc, char *argv[])
{
	unsigned long request;
	void *arg;
	uint64_t *samples, t0;
	long calls, warmup, i;
	int fd;

	if (argc != 5 || (calls = atol(argv[3])) <= 0 || (warmup = atol(argv[4])) < 0) {
		fprintf(stderr, "usage: %s getcap|fionread NODE|- CALLS WARMUP\n", argv[0]);
		return 2;
	}
	fd = open_target(argv[1], argv[2], &request, &arg);
	samples = malloc(sizeof(*samples) * (size_t)calls);
	if (fd < 0 || samples == NULL) {
		perror(argv[2]);
		return 1;
	}
	for (i = -warmup; i < calls; i++) {
		t0 = now_ns();
		if (ioctl(fd, request, arg) < 0) {
			perror("ioctl");
			return 1;
		}
		if (i >= 0)
			samples[i] = now_ns() - t0;
	}
	if (request == DRM_IOCTL_GET_CAP && ((uint64_t *)arg)[1] != 1) {
		fprintf(stderr, "GET_CAP answered value %llu, expected 1\n",
			(unsigned long long)((uint64_t *)arg)[1]);
		return 1;
	}
	qsort(samples, (size_t)calls, sizeof(*samples), cmp_u64);
	printf("%llu %llu\n", (unsigned long long)percentile(samples, (size_t)calls, 50),
	       (unsigned long long)percentile(samples, (size_t)calls, 99));
	return 0;
}
