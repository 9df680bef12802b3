// SPDX-License-Identifier: GPL-2.0
/* klpfleet lab: a second callbacks livepatch (vmlinux only); replace=1 makes it an atomic replace. */
#define pr_fmt(fmt) KBUILD_MODNAME ": " fmt

#include <linux/kernel.h>
#include <linux/livepatch.h>
#include <linux/module.h>

#include "callbacks_log.h"

static int replace;
module_param(replace, int, 0644);
MODULE_PARM_DESC(replace, "replace (default=0)");

static int pre_patch_callback(struct klp_object *obj)
{
	lab_log_object(__func__, obj);
	return 0;
}

static void post_patch_callback(struct klp_object *obj)
{
	lab_log_object(__func__, obj);
}

static void pre_unpatch_callback(struct klp_object *obj)
{
	lab_log_object(__func__, obj);
}

static void post_unpatch_callback(struct klp_object *obj)
{
	lab_log_object(__func__, obj);
}

static struct klp_func no_funcs[] = { {} };

static struct klp_object objs[] = {
	{
		.name = NULL,
		.funcs = no_funcs,
		.callbacks = {
			.pre_patch = pre_patch_callback,
			.post_patch = post_patch_callback,
			.pre_unpatch = pre_unpatch_callback,
			.post_unpatch = post_unpatch_callback,
		},
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
