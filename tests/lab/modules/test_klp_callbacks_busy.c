// SPDX-License-Identifier: GPL-2.0
/*
 * klpfleet lab: a module whose worker sleeps inside busymod_work_func while block_transition is Y.
 * The callbacks demo patches that function, so a sleeping worker holds its transition back (a stall).
 */
#define pr_fmt(fmt) KBUILD_MODNAME ": " fmt

#include <linux/completion.h>
#include <linux/delay.h>
#include <linux/kernel.h>
#include <linux/module.h>
#include <linux/workqueue.h>

static bool block_transition;
module_param(block_transition, bool, 0644);
MODULE_PARM_DESC(block_transition, "block_transition (default=false)");

static void busymod_work_func(struct work_struct *work);
static DECLARE_WORK(busy_work, busymod_work_func);
static DECLARE_COMPLETION(busy_work_started);

/* noinline: the livepatch must find it as a function of its own, and the worker must sleep in it. */
static noinline void busymod_work_func(struct work_struct *work)
{
	pr_info("%s enter\n", __func__);
	complete(&busy_work_started);

	while (READ_ONCE(block_transition))
		msleep(20);

	pr_info("%s exit\n", __func__);
}

static int __init test_klp_callbacks_busy_init(void)
{
	pr_info("%s\n", __func__);
	schedule_work(&busy_work);

	/* The worker must be running before init returns; unblocked, it must also have finished. */
	wait_for_completion(&busy_work_started);
	if (!block_transition)
		flush_work(&busy_work);
	return 0;
}

static void __exit test_klp_callbacks_busy_exit(void)
{
	WRITE_ONCE(block_transition, false);
	flush_work(&busy_work);
	pr_info("%s\n", __func__);
}

module_init(test_klp_callbacks_busy_init);
module_exit(test_klp_callbacks_busy_exit);
MODULE_LICENSE("GPL");
MODULE_DESCRIPTION("klpfleet lab: module with a worker that can block a transition");
