/*
 * The least a userspace tap hop can do: a tap-to-tap relay, used by
 * benches/tools/ceiling.sh as the floor of a userspace hop's latency and
 * the ceiling of its throughput (issue 29). Every frame one read() and one
 * write(), nothing else: no parsing, no tables, no batching.
 *
 *   relay TAP_A TAP_B MODE
 *
 * MODE: "busy" spins on non-blocking reads (a poll-mode worker's best
 * case), "block" sleeps in poll() when both taps are empty (an
 * interrupt-mode worker's). The taps have vnet headers and TSO/checksum
 * offloads, as podswitch's pod taps do, so TCP superframes pass whole.
 * Prints "ready" once both taps exist; the caller moves them into
 * namespaces. Runs until killed.
 */
#include <fcntl.h>
#include <linux/if_tun.h>
#include <net/if.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <unistd.h>

static int tap(const char *name)
{
	struct ifreq r;
	int hdr = 12;
	int fd = open("/dev/net/tun", O_RDWR | O_NONBLOCK);

	if (fd < 0) {
		perror("open /dev/net/tun");
		exit(1);
	}
	memset(&r, 0, sizeof r);
	r.ifr_flags = IFF_TAP | IFF_NO_PI | IFF_VNET_HDR;
	strncpy(r.ifr_name, name, IFNAMSIZ - 1);
	if (ioctl(fd, TUNSETIFF, &r) < 0 || ioctl(fd, TUNSETVNETHDRSZ, &hdr) < 0 ||
	    ioctl(fd, TUNSETOFFLOAD, TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6 | TUN_F_TSO_ECN) < 0) {
		perror(name);
		exit(1);
	}
	return fd;
}

int main(int argc, char **argv)
{
	static char buf[65536 + 64];
	int a, b, block;
	ssize_t n;

	if (argc != 4 || (strcmp(argv[3], "busy") && strcmp(argv[3], "block"))) {
		fprintf(stderr, "usage: relay TAP_A TAP_B busy|block\n");
		return 2;
	}
	block = !strcmp(argv[3], "block");
	a = tap(argv[1]);
	b = tap(argv[2]);
	printf("ready\n");
	fflush(stdout);
	for (;;) {
		int moved = 0;
		struct pollfd p[2] = { { a, POLLIN, 0 }, { b, POLLIN, 0 } };

		while ((n = read(a, buf, sizeof buf)) > 0) {
			moved = 1;
			if (write(b, buf, n) < 0)
				break;
		}
		while ((n = read(b, buf, sizeof buf)) > 0) {
			moved = 1;
			if (write(a, buf, n) < 0)
				break;
		}
		if (!moved && block)
			poll(p, 2, -1);
	}
}
