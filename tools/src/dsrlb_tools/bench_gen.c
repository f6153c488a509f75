/* dsrlb bench traffic generator: sends the Ethernet frames it reads on stdin (all LEN bytes long)
 * out of IFNAME, round and round, as fast as the kernel takes them: sendmmsg() on a packet socket
 * that bypasses the qdisc, 64 frames per call. `dsrlb bench` compiles it into a temporary directory.
 * Usage: bench_gen IFNAME LEN < frames */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <linux/if_ether.h>
#include <linux/if_packet.h>
#include <net/if.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/socket.h>

#define BATCH 64

static char frames[1 << 20];

int main(int argc, char **argv)
{
	if (argc != 3) {
		fprintf(stderr, "usage: %s IFNAME LEN < frames\n", argv[0]);
		return 2;
	}
	unsigned len = atoi(argv[2]);
	unsigned count = len ? fread(frames, 1, sizeof frames, stdin) / len : 0;
	if (count == 0) {
		fprintf(stderr, "bench_gen: no frames of %u bytes on stdin\n", len);
		return 2;
	}
	int fd = socket(AF_PACKET, SOCK_RAW, htons(ETH_P_IP)), one = 1;
	struct sockaddr_ll addr = { .sll_family = AF_PACKET,
				    .sll_protocol = htons(ETH_P_IP),
				    .sll_ifindex = if_nametoindex(argv[1]) };
	if (fd < 0 || setsockopt(fd, SOL_PACKET, PACKET_QDISC_BYPASS, &one, sizeof one) ||
	    bind(fd, (struct sockaddr *)&addr, sizeof addr)) {
		perror("bench_gen");
		return 1;
	}
	struct iovec iov[BATCH];
	struct mmsghdr msgs[BATCH] = { 0 };
	for (int i = 0; i < BATCH; i++) {
		iov[i].iov_len = len;
		msgs[i].msg_hdr.msg_iov = &iov[i];
		msgs[i].msg_hdr.msg_iovlen = 1;
	}
	puts("ready");
	fflush(stdout);
	for (unsigned next = 0;; next = (next + BATCH) % count) {
		for (int i = 0; i < BATCH; i++)
			iov[i].iov_base = frames + (next + i) % count * len;
		sendmmsg(fd, msgs, BATCH, 0); /* a full backlog drops frames: what a saturated link does */
	}
}
