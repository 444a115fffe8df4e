// SPDX-License-Identifier: MIT
/*
 * fd-privilege PID: what a process could do with the Xen handles it holds,
 * tried through the very open files it holds.
 *
 * Each fd of PID is duplicated into this process with pidfd_getfd(2) (root,
 * CAP_SYS_PTRACE), which shares the open file description and with it any
 * restriction set on it (IOCTL_PRIVCMD_RESTRICT, IOCTL_EVTCHN_RESTRICT_DOMID).
 * Then:
 *
 * - /dev/xen/privcmd: IOCTL_PRIVCMD_HYPERCALL xen_version(XENVER_version).
 *   A file restricted to one domain refuses every such hypercall (EPERM); an
 *   unrestricted one lets its holder issue any hypercall of dom0.
 *   With --backend DOMID, also IOCTL_PRIVCMD_DM_OP (no buffer) for DOMID:
 *   a backend's file (IOCTL_PRIVCMD_HOSTMEM_BACKEND) refuses it (EPERM),
 *   one with the device model's rights accepts it.
 * - /dev/xen/evtchn: IOCTL_EVTCHN_BIND_UNBOUND_PORT for dom0 (the port is
 *   unbound again at once).  A restricted file refuses it.
 * - /dev/xen/xenbus, or a unix socket whose peer is xenstored's
 *   (/run/xenstored/socket, found with sock_diag): a xenstore connection,
 *   as privileged as dom0's.
 * - everything else (sockets, pipes, /dev/xen/hypercall buffers...) is
 *   listed for the log.
 *
 * One line per fd, "fd N TARGET: VERDICT", and a summary line
 * "unrestricted=N xenstore=N dm=N".  Exit status: 0 when no fd is
 * unrestricted, none is a xenstore connection (with --allow-xenstore:
 * whatever the xenstore count) and, with --backend, none accepts a DMOP;
 * 1 otherwise, 2 on a usage or system error.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <dirent.h>
#include <limits.h>
#include <sys/ioctl.h>
#include <sys/syscall.h>
#include <unistd.h>
#include <sys/socket.h>
#include <linux/netlink.h>
#include <linux/rtnetlink.h>
#include <linux/sock_diag.h>
#include <linux/unix_diag.h>

#ifndef SYS_pidfd_open
#define SYS_pidfd_open 434
#endif
#ifndef SYS_pidfd_getfd
#define SYS_pidfd_getfd 438
#endif

/* include/uapi/xen/privcmd.h */
struct privcmd_hypercall {
	uint64_t op;
	uint64_t arg[5];
};
#define IOCTL_PRIVCMD_HYPERCALL \
	_IOC(_IOC_NONE, 'P', 0, sizeof(struct privcmd_hypercall))
#define HYPERVISOR_xen_version 17
#define XENVER_version 0
struct privcmd_dm_op {
	uint16_t dom;
	uint16_t num;
	uint64_t ubufs;
};
#define IOCTL_PRIVCMD_DM_OP \
	_IOC(_IOC_NONE, 'P', 5, sizeof(struct privcmd_dm_op))

/* include/uapi/xen/evtchn.h */
struct ioctl_evtchn_bind_unbound_port {
	unsigned int remote_domain;
};
#define IOCTL_EVTCHN_BIND_UNBOUND_PORT \
	_IOC(_IOC_NONE, 'E', 2, sizeof(struct ioctl_evtchn_bind_unbound_port))
struct ioctl_evtchn_unbind {
	unsigned int port;
};
#define IOCTL_EVTCHN_UNBIND \
	_IOC(_IOC_NONE, 'E', 3, sizeof(struct ioctl_evtchn_unbind))

/* The unix sockets of the host: inode, peer inode, bound path. */
struct usock {
	unsigned int ino, peer;
	char path[108];
};
static struct usock *socks;
static size_t nsocks;

static int load_unix_sockets(void)
{
	struct {
		struct nlmsghdr nlh;
		struct unix_diag_req req;
	} q = {
		.nlh = { .nlmsg_len = sizeof(q), .nlmsg_type = SOCK_DIAG_BY_FAMILY,
			 .nlmsg_flags = NLM_F_REQUEST | NLM_F_DUMP },
		.req = { .sdiag_family = AF_UNIX, .udiag_states = -1,
			 .udiag_show = UDIAG_SHOW_NAME | UDIAG_SHOW_PEER },
	};
	static char buf[65536];
	int s = socket(AF_NETLINK, SOCK_DGRAM | SOCK_CLOEXEC, NETLINK_SOCK_DIAG);

	if (s < 0 || send(s, &q, sizeof(q), 0) < 0)
		return -1;
	for (;;) {
		ssize_t n = recv(s, buf, sizeof(buf), 0);
		struct nlmsghdr *h = (struct nlmsghdr *)buf;

		if (n <= 0)
			break;
		for (; NLMSG_OK(h, n); h = NLMSG_NEXT(h, n)) {
			struct unix_diag_msg *m = NLMSG_DATA(h);
			struct rtattr *a = (struct rtattr *)(m + 1);
			int len = h->nlmsg_len - NLMSG_LENGTH(sizeof(*m));
			struct usock u = { .ino = m->udiag_ino };

			if (h->nlmsg_type == NLMSG_DONE) {
				close(s);
				return 0;
			}
			if (h->nlmsg_type == NLMSG_ERROR)
				goto out;
			for (; RTA_OK(a, len); a = RTA_NEXT(a, len)) {
				if (a->rta_type == UNIX_DIAG_PEER)
					memcpy(&u.peer, RTA_DATA(a), 4);
				else if (a->rta_type == UNIX_DIAG_NAME) {
					size_t l = RTA_PAYLOAD(a);

					if (l >= sizeof(u.path))
						l = sizeof(u.path) - 1;
					memcpy(u.path, RTA_DATA(a), l);
				}
			}
			socks = realloc(socks, (nsocks + 1) * sizeof(*socks));
			if (!socks)
				goto out;
			socks[nsocks++] = u;
		}
	}
out:
	close(s);
	return -1;
}

static const struct usock *unix_socket(unsigned int ino)
{
	for (size_t i = 0; i < nsocks; i++)
		if (socks[i].ino == ino)
			return &socks[i];
	return NULL;
}

int main(int argc, char **argv)
{
	char dir[64], link[PATH_MAX + 1], target[PATH_MAX + 1];
	int unrestricted = 0, xenbus = 0, allow_xenstore = 0, dm = 0;
	long backend = -1;
	struct dirent *de;
	long pid;
	int pidfd;
	DIR *d;

	while (argc > 2) {
		if (!strcmp(argv[1], "--allow-xenstore")) {
			allow_xenstore = 1;
			argv++;
			argc--;
		} else if (argc > 3 && !strcmp(argv[1], "--backend")) {
			backend = strtol(argv[2], NULL, 10);
			argv += 2;
			argc -= 2;
		} else {
			break;
		}
	}
	if (argc != 2 || (pid = strtol(argv[1], NULL, 10)) <= 0) {
		fprintf(stderr, "usage: fd-privilege [--allow-xenstore] [--backend DOMID] PID\n");
		return 2;
	}
	if (load_unix_sockets() < 0)
		fprintf(stderr, "sock_diag: %s (xenstore sockets not recognised)\n",
			strerror(errno));
	pidfd = syscall(SYS_pidfd_open, (pid_t)pid, 0);
	if (pidfd < 0) {
		perror("pidfd_open");
		return 2;
	}
	snprintf(dir, sizeof(dir), "/proc/%ld/fd", pid);
	d = opendir(dir);
	if (!d) {
		perror(dir);
		return 2;
	}
	while ((de = readdir(d))) {
		char *end;
		long tfd = strtol(de->d_name, &end, 10);
		ssize_t n;
		int fd;

		if (*end || end == de->d_name)
			continue;
		snprintf(link, sizeof(link), "%s/%s", dir, de->d_name);
		n = readlink(link, target, PATH_MAX);
		if (n < 0)
			continue;
		target[n] = 0;
		fd = syscall(SYS_pidfd_getfd, pidfd, (int)tfd, 0);
		if (fd < 0) {
			printf("fd %ld %s: cannot duplicate (%s)\n", tfd, target,
			       strerror(errno));
			unrestricted++;
			continue;
		}
		if (!strcmp(target, "/dev/xen/privcmd")) {
			struct privcmd_hypercall h = {
				.op = HYPERVISOR_xen_version,
				.arg = { XENVER_version },
			};
			long rc = ioctl(fd, IOCTL_PRIVCMD_HYPERCALL, &h);

			if (rc >= 0) {
				printf("fd %ld %s: UNRESTRICTED (xen_version answered %ld.%ld)\n",
				       tfd, target, rc >> 16, rc & 0xffff);
				unrestricted++;
			} else if (errno == EPERM) {
				printf("fd %ld %s: restricted (hypercall refused, EPERM)\n",
				       tfd, target);
			} else {
				printf("fd %ld %s: UNEXPECTED hypercall error %s\n",
				       tfd, target, strerror(errno));
				unrestricted++;
			}
			if (backend >= 0) {
				struct privcmd_dm_op op = { .dom = (uint16_t)backend };

				if (ioctl(fd, IOCTL_PRIVCMD_DM_OP, &op) == 0) {
					printf("fd %ld %s: DEVICE MODEL rights (DMOPs on dom%ld accepted)\n",
					       tfd, target, backend);
					dm++;
				} else {
					printf("fd %ld %s: no DMOP on dom%ld (%s)\n",
					       tfd, target, backend, strerror(errno));
				}
			}
		} else if (!strcmp(target, "/dev/xen/evtchn")) {
			struct ioctl_evtchn_bind_unbound_port b = { .remote_domain = 0 };
			long rc = ioctl(fd, IOCTL_EVTCHN_BIND_UNBOUND_PORT, &b);

			if (rc >= 0) {
				struct ioctl_evtchn_unbind u = { .port = (unsigned int)rc };

				(void)ioctl(fd, IOCTL_EVTCHN_UNBIND, &u);
				printf("fd %ld %s: UNRESTRICTED (bound port %ld for dom0)\n",
				       tfd, target, rc);
				unrestricted++;
			} else {
				printf("fd %ld %s: restricted (bind for dom0 refused, %s)\n",
				       tfd, target, strerror(errno));
			}
		} else if (!strcmp(target, "/dev/xen/xenbus")) {
			printf("fd %ld %s: XENSTORE connection (dom0's privilege)\n",
			       tfd, target);
			xenbus++;
		} else if (!strncmp(target, "socket:[", 8)) {
			const struct usock *me = unix_socket(strtoul(target + 8, NULL, 10));
			const struct usock *peer = me && me->peer ? unix_socket(me->peer) : NULL;

			if (peer && strstr(peer->path, "xenstored")) {
				printf("fd %ld %s: XENSTORE connection to %s (dom0's privilege)\n",
				       tfd, target, peer->path);
				xenbus++;
			} else {
				printf("fd %ld %s%s%s\n", tfd, target,
				       peer && peer->path[0] ? " peer " : "",
				       peer ? peer->path : "");
			}
		} else {
			printf("fd %ld %s\n", tfd, target);
		}
		close(fd);
	}
	closedir(d);
	printf("unrestricted=%d xenstore=%d dm=%d\n", unrestricted, xenbus, dm);
	return unrestricted || dm || (xenbus && !allow_xenstore) ? 1 : 0;
}
