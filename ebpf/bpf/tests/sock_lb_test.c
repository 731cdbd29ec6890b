/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* BPF_PROG_RUN harness for the socket LB's decision (lib/sock_xlate.h). The kernel runs
 * cgroup sock_addr programs only from real sockets, so the same functions run here inside a
 * tc program: the test passes a struct mw_sock4/6 as the packet's payload (after a 14-byte
 * Ethernet header), the program runs the decision on a copy and writes the result back, and
 * the test reads it from data_out. Cilium tests its socket LB the same way
 * (bpf/tests/host_only_socket_lb_test.c). Maps are the pinned ones, shared with the loader. */
#include "../lib/common.h"
#include "../lib/sock_xlate.h"

#define MW_TEST_OFF 14

/* The verdict travels back in the first four bytes of the "Ethernet header". */
struct mw_test_hdr {
	__s32 verdict;
	__u8 pad[MW_TEST_OFF - 4];
};

SEC("classifier")
int mw_test_fwd4(struct __sk_buff *skb)
{
	void *data = (void *)(long)skb->data;
	void *end = (void *)(long)skb->data_end;
	struct mw_test_hdr *h = data;
	struct mw_sock4 *in = data + MW_TEST_OFF;

	if ((void *)(in + 1) > end)
		return MW_TC_ACT_SHOT;
	struct mw_sock4 s = *in;

	h->verdict = mw_sock_fwd4(&s);
	*in = s;
	return MW_TC_ACT_OK;
}

SEC("classifier")
int mw_test_rev4(struct __sk_buff *skb)
{
	void *data = (void *)(long)skb->data;
	void *end = (void *)(long)skb->data_end;
	struct mw_sock4 *in = data + MW_TEST_OFF;

	if ((void *)(in + 1) > end)
		return MW_TC_ACT_SHOT;
	struct mw_sock4 s = *in;

	mw_sock_rev4(&s);
	*in = s;
	return MW_TC_ACT_OK;
}

SEC("classifier")
int mw_test_fwd6(struct __sk_buff *skb)
{
	void *data = (void *)(long)skb->data;
	void *end = (void *)(long)skb->data_end;
	struct mw_test_hdr *h = data;
	struct mw_sock6 *in = data + MW_TEST_OFF;

	if ((void *)(in + 1) > end)
		return MW_TC_ACT_SHOT;
	struct mw_sock6 s = *in;

	h->verdict = mw_sock_fwd6(&s);
	*in = s;
	return MW_TC_ACT_OK;
}

SEC("classifier")
int mw_test_rev6(struct __sk_buff *skb)
{
	void *data = (void *)(long)skb->data;
	void *end = (void *)(long)skb->data_end;
	struct mw_sock6 *in = data + MW_TEST_OFF;

	if ((void *)(in + 1) > end)
		return MW_TC_ACT_SHOT;
	struct mw_sock6 s = *in;

	mw_sock_rev6(&s);
	*in = s;
	return MW_TC_ACT_OK;
}

char _license[] SEC("license") = "Dual BSD/GPL";
