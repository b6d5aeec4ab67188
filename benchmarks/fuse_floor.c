/*
 * The FUSE floor: the least work a libfuse3 low-level server can do per ioctl.
 *
 * It serves one regular file, /dev, and answers DRM_IOCTL_GET_CAP (0xC010640C, a 16-byte
 * _IOWR struct {u64 capability; u64 value;}) by echoing the struct with value = 1. Whatever
 * emudev costs on top of this is the daemon's own; everything below it is the kernel's and
 * libfuse's. Run as `fuse_floor [-s] MOUNTPOINT`: multi-threaded with libfuse's default loop
 * configuration unless -s asks for the single-threaded loop. SIGTERM unmounts and exits.
 */
#define FUSE_USE_VERSION 312
#include <fuse_lowlevel.h>

#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#define NODE_INO 2
#define NODE_NAME "dev"
#define DRM_IOCTL_GET_CAP 0xC010640Cu

static void fill_attr(fuse_ino_t ino, struct stat *st)
{
	memset(st, 0, sizeof(*st));
	st->st_ino = ino;
	st->st_mode = ino == FUSE_ROOT_ID ? S_IFDIR | 0755 : S_IFREG | 0666;
	st->st_nlink = ino == FUSE_ROOT_ID ? 2 : 1;
}

static void floor_lookup(fuse_req_t req, fuse_ino_t parent, const char *name)
{
	struct fuse_entry_param e;

	if (parent != FUSE_ROOT_ID || strcmp(name, NODE_NAME) != 0) {
		fuse_reply_err(req, ENOENT);
		return;
	}
	memset(&e, 0, sizeof(e));
	e.ino = NODE_INO;
	e.attr_timeout = 3600.0;
	e.entry_timeout = 3600.0;
	fill_attr(NODE_INO, &e.attr);
	fuse_reply_entry(req, &e);
}

static void floor_getattr(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
	struct stat st;

	(void)fi;
	if (ino != FUSE_ROOT_ID && ino != NODE_INO) {
		fuse_reply_err(req, ENOENT);
		return;
	}
	fill_attr(ino, &st);
	fuse_reply_attr(req, &st, 3600.0);
}

static void floor_ioctl(fuse_req_t req, fuse_ino_t ino, unsigned int cmd, void *arg,
			struct fuse_file_info *fi, unsigned flags, const void *in_buf,
			size_t in_bufsz, size_t out_bufsz)
{
	uint64_t cap[2];

	(void)ino; (void)arg; (void)fi; (void)flags;
	if (cmd != DRM_IOCTL_GET_CAP || in_bufsz != sizeof(cap) || out_bufsz != sizeof(cap)) {
		fuse_reply_err(req, ENOTTY);
		return;
	}
	memcpy(cap, in_buf, sizeof(cap));
	cap[1] = 1;
	fuse_reply_ioctl(req, 0, cap, sizeof(cap));
}

static const struct fuse_lowlevel_ops floor_ops = {
	.lookup = floor_lookup,
	.getattr = floor_getattr,
	.ioctl = floor_ioctl,
};

static int serve(struct fuse_session *se, int singlethread)
{
	struct fuse_loop_config *config;
	int ret;

	if (singlethread)
		return fuse_session_loop(se);
	config = fuse_loop_cfg_create();
	ret = fuse_session_loop_mt(se, config);
	fuse_loop_cfg_destroy(config);
	return ret;
}

int main(int argc, char *argv[])
{
	struct fuse_args args = FUSE_ARGS_INIT(argc, argv);
	struct fuse_cmdline_opts opts;
	struct fuse_session *se;
	int ret = 1;

	if (fuse_parse_cmdline(&args, &opts) != 0 || opts.mountpoint == NULL)
		return 1;
	se = fuse_session_new(&args, &floor_ops, sizeof(floor_ops), NULL);
	if (se != NULL && fuse_set_signal_handlers(se) == 0) {
		if (fuse_session_mount(se, opts.mountpoint) == 0) {
			ret = serve(se, opts.singlethread) < 0;
			fuse_session_unmount(se);
		}
		fuse_remove_signal_handlers(se);
	}
	if (se != NULL)
		fuse_session_destroy(se);
	free(opts.mountpoint);
	fuse_opt_free_args(&args);
	return ret;
}
