// SPDX-License-Identifier: GPL-2.0
/* klpfleet lab: a second callbacks livepatch (vmlinux only); replace=1 makes it an atomic replace. */
#define pr_fmt(fmt) KBUILD_MODNAME ": " fmt

#include <linux/kernel.h>
#include <linux/livepatch.h>
#include <linux/module.h>

#define LAB_PRE_PATCH_RET 0
#include "callbacks_log.h"

static int replace;
module_param(replace, int, 0644);
MODULE_PARM_DESC(replace, "replace (default=0)");

static struct klp_func no_funcs[] = { {} };

static struct klp_object objs[] = {
	{
		.name = NULL,
		.funcs = no_funcs,
		.callbacks = LAB_ALL_CALLBACKS,
	},
	{}
};

static struct klp_patch patch = {
	.mod = THIS_MODULE,
	.objs = objs,
};

static int __init lab_demo2_init(void)
{
	patch.replace = replace;
	return klp_enable_patch(&patch);
}

static void __exit lab_demo2_exit(void)
{
}

module_init(lab_demo2_init);
module_exit(lab_demo2_exit);
MODULE_LICENSE("GPL");
MODULE_INFO(livepatch, "Y");
MODULE_DESCRIPTION("klpfleet lab: second livepatch callbacks demo");
