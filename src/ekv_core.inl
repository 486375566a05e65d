/* >>core */
