// SPDX-License-Identifier: GPL-2.0
/*
 * klpfleet lab: livepatch with all four callbacks on vmlinux and two test modules, like the kernel
 * selftests' module of the same name. pre_patch returns the pre_patch_ret parameter, so a test can make
 * the kernel refuse the patch (insmod, -19 = ENODEV) or a later target module load (write the parameter).
 * replace=1 makes it an atomic-replace patch (a forced replace stalls on the busy module's worker).
 */
#define pr_fmt(fmt) KBUILD_MODNAME ": " fmt

#include <linux/kernel.h>
#include <linux/livepatch.h>
#include <linux/module.h>
#include <linux/workqueue.h>

static int pre_patch_ret;
module_param(pre_patch_ret, int, 0644);
MODULE_PARM_DESC(pre_patch_ret, "pre_patch_ret (default=0)");

static int replace;
module_param(replace, int, 0644);
MODULE_PARM_DESC(replace, "replace (default=0)");

#define LAB_PRE_PATCH_RET pre_patch_ret
#include "callbacks_log.h"

static void patched_work_func(struct work_struct *work)
{
	pr_info("%s\n", __func__);
}

static struct klp_func no_funcs[] = { {} };

static struct klp_func busymod_funcs[] = {
	{ .old_name = "busymod_work_func", .new_func = patched_work_func },
	{}
};

static struct klp_object objs[] = {
	{ .name = NULL, .funcs = no_funcs, .callbacks = LAB_ALL_CALLBACKS },
	{ .name = "test_klp_callbacks_mod", .funcs = no_funcs, .callbacks = LAB_ALL_CALLBACKS },
	{ .name = "test_klp_callbacks_busy", .funcs = busymod_funcs, .callbacks = LAB_ALL_CALLBACKS },
	{}
};

static struct klp_patch patch = {
	.mod = THIS_MODULE,
	.objs = objs,
};

static int __init lab_demo_init(void)
{
	patch.replace = replace;
	return klp_enable_patch(&patch);
}

static void __exit lab_demo_exit(void)
{
}

module_init(lab_demo_init);
module_exit(lab_demo_exit);
MODULE_LICENSE("GPL");
MODULE_INFO(livepatch, "Y");
MODULE_DESCRIPTION("klpfleet lab: livepatch callbacks demo");
